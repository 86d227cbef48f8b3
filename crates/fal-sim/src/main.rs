//! `fal-sim --bind ADDR`: runs the fal simulator and prints its base URLs.

use std::net::SocketAddr;

use clap::Parser;
use fal_sim::{FalSim, KeyKind, SimConfig};

#[derive(Parser)]
#[command(name = "fal-sim", about = "A protocol-faithful fal.ai simulator")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", env = "FAL_SIM_BIND")]
    bind: SocketAddr,
    /// Multiplies every simulated duration (1.0 is fal's real pace).
    #[arg(long, default_value_t = 0.01, env = "FAL_SIM_TIME_FACTOR")]
    time_factor: f64,
    /// A valid key to register (`id:secret`); repeatable.
    #[arg(long = "key", env = "FAL_SIM_KEYS", value_delimiter = ',')]
    keys: Vec<String>,
    /// A billing-locked key to register; repeatable.
    #[arg(long = "locked-key")]
    locked_keys: Vec<String>,
    /// Requests of one endpoint running at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

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
