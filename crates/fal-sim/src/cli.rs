//! The `fal-sim` command line, here so other crates can check invocations against it (the
//! deployment files run the binary).

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "fal-sim", about = "A protocol-faithful fal.ai simulator")]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", env = "FAL_SIM_BIND")]
    pub bind: SocketAddr,
    /// Where clients reach the simulator, if not at the bound address (e.g.
    /// `http://fal-sim:9000` in a container network); every URL it hands out starts with it.
    #[arg(long, env = "FAL_SIM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Multiplies every simulated duration (1.0 is fal's real pace).
    #[arg(long, default_value_t = 0.01, env = "FAL_SIM_TIME_FACTOR")]
    pub time_factor: f64,
    /// A valid key to register (`id:secret`); repeatable.
    #[arg(long = "key", env = "FAL_SIM_KEYS", value_delimiter = ',')]
    pub keys: Vec<String>,
    /// A billing-locked key to register; repeatable.
    #[arg(long = "locked-key")]
    pub locked_keys: Vec<String>,
    /// Requests of one endpoint running at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
}
