//! `fal-sim --bind ADDR`: runs the fal simulator and prints its base URLs.

use clap::Parser;
use fal_sim::cli::Args;
use fal_sim::{FalSim, KeyKind, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs go to stderr: stdout carries only the `NAME=value` lines other tools parse.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fal_sim=info".into()),
        )
        .init();
    let args = Args::parse();
    let config = SimConfig {
        bind: args.bind,
        public_url: args.public_url,
        time_factor: args.time_factor,
        concurrency_per_endpoint: args.concurrency.max(1),
        ..SimConfig::default()
    };
    let sim = FalSim::start(config).await?;
    for key in &args.keys {
        sim.register_key(key, KeyKind::Valid);
    }
    for key in &args.locked_keys {
        sim.register_key(key, KeyKind::BillingLocked);
    }
    println!("FAL_QUEUE_URL={}", sim.queue_url());
    println!("FAL_REST_URL={}", sim.rest_url());
    println!("FAL_CDN_URL={}", sim.cdn_url());
    println!("FAL_JWKS_URL={}", sim.jwks_url());
    println!("FAL_SIM_CONTROL_URL={}", sim.control_url());
    if let Some(key) = sim.default_key() {
        println!("FAL_KEY={key}");
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
