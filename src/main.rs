//! `clacks`: the broker (`serve`) and its client tools (`send`, `receive`, `bench`).

mod agent_client;
mod agent_run;
mod bench;
mod bench091;
mod bench_dtx;
mod cli;
mod client_cmds;
mod config;
mod generate;
mod serve;
mod users;
mod web;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter};

use cli::{Cli, Command, LogFormat};

/// jemalloc instead of glibc's allocator: glibc kept hundreds of megabytes freed by
/// short-lived per-message allocations on worker threads, and jemalloc is faster on the
/// broker's many small allocations.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_filter()));
    let level = filter.to_string();
    // Reloadable, so that management's setLogLevel can change it at run time.
    let (filter, reload) = reload::Layer::new(filter);
    // Colour only for a person at a terminal: a log file or journald gets plain text.
    let text = (cli.log_format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
    });
    let json = (cli.log_format == LogFormat::Json)
        .then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    let log = serve::LogLevel {
        initial: level,
        set: std::sync::Arc::new(move |spec: &str| {
            let filter = serve::log_filter(spec)?;
            reload.reload(filter).map_err(|e| e.to_string())
        }),
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(args, log).await,
        Command::Send(args) => client_cmds::send(args).await,
        Command::Receive(args) => client_cmds::receive(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::User(cmd) => users::run(cmd),
        Command::Call(args) => agent_client::call(args).await,
        Command::Methods(args) => agent_client::methods(args).await,
        Command::Nodes(args) => agent_client::nodes(args).await,
        Command::Queues(args) => agent_client::queues(args).await,
        Command::Link(cmd) => agent_client::link(cmd).await,
        Command::Route(cmd) => agent_client::route(cmd).await,
        Command::Events(args) => agent_client::events(args).await,
        Command::SendEvent(args) => agent_client::send_event(args).await,
        Command::Shell(args) => agent_client::shell(args).await,
        Command::Agent(args) => agent_run::run_standalone(args).await,
        Command::Generate(args) => generate::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clacks: {e:#}");
            ExitCode::FAILURE
        }
    }
}
