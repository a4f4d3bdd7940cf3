//! Temporary entry point: `clacks serve [ADDR]` with guest/guest (replaced by the full CLI).

use clacks_broker::server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:5672".into());
    let mut config = ServerConfig {
        listen: addr.parse()?,
        ..ServerConfig::default()
    };
    config.users.insert("guest".into(), "guest".into());
    let server = Server::bind(config).await?;
    println!("listening on {}", server.local_addr()?);
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
