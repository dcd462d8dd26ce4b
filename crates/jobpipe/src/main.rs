//! The `jobpipe` command: `dev` runs the whole pipeline locally; `invoke` runs one function once.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use jobpipe::dev::{DevOptions, DevStack};

#[derive(Parser)]
#[command(name = "jobpipe", about = "jobpipe: run the async job pipeline locally")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run everything on 127.0.0.1: moto, the four functions, their event sources, the HTTP and
    /// WebSocket APIs and the web UI.
    Dev {
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Skip `cargo build` of the functions.
        #[arg(long)]
        no_build: bool,
        /// Repository root (where template.yaml is).
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Invoke one function of template.yaml once with an event file, like `sam local invoke`.
    Invoke {
        /// The function's logical id in template.yaml (e.g. QueueProcessorFunction) or its crate name.
        function: String,
        /// The event, a JSON file.
        #[arg(short = 'e', long = "event")]
        event: PathBuf,
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Commands::Dev { port, no_build, root } => {
            let mut options = DevOptions::new(root.canonicalize()?);
            options.port = port;
            options.build = !no_build;
            let stack = DevStack::start(options).await?;
            println!(
                "jobpipe is running: open {}  (AWS endpoint {}; Ctrl-C stops everything)",
                stack.base_url(),
                stack.endpoint
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping");
            stack.stop().await;
            Ok(())
        }
        Commands::Invoke { function, event, no_build, root } => {
            let payload = std::fs::read_to_string(&event)?;
            let payload: serde_json::Value =
                serde_json::from_str(&payload).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", event.display()))?;
            let options = jobpipe::invoke::InvokeOptions { build: !no_build, ..Default::default() };
            let output = jobpipe::invoke::invoke_once(&root.canonicalize()?, &function, payload, options).await?;
            println!("{}", serde_json::to_string_pretty(&output)?);
            Ok(())
        }
    }
}
