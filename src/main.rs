//! `clacks`: the broker (`serve`) and its client tools (`send`, `receive`, `bench`).

mod agent_cmds;
mod agent_run;
mod bench;
mod cli;
mod client_cmds;
mod config;
mod serve;
mod users;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_filter()));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Send(args) => client_cmds::send(args).await,
        Command::Receive(args) => client_cmds::receive(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::User(cmd) => users::run(cmd),
        Command::Call(args) => agent_cmds::call(args).await,
        Command::Agent(args) => agent_run::run_standalone(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clacks: {e:#}");
            ExitCode::FAILURE
        }
    }
}
