//! Reads the configuration, builds the clients once, and serves: under the
//! Lambda runtime by default, or on a local listener with `--listen ADDR`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use azure_openai_image::front::{local, runtime};
use azure_openai_image::{Config, build_app, observe};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if tracing::subscriber::set_global_default(observe::log_subscriber(std::io::stdout)).is_err() {
        eprintln!("a log subscriber was already set");
    }

    let listen = match listen_address() {
        Ok(listen) => listen,
        Err(problem) => {
            tracing::error!("{problem}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(variable = err.variable, "{err}");
            return ExitCode::FAILURE;
        }
    };
    let models: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    tracing::info!(?models, "configured");
    let app = match build_app(config).await {
        Ok(app) => Arc::new(app),
        Err(problem) => {
            tracing::error!("{problem}");
            return ExitCode::FAILURE;
        }
    };
    let result = match listen {
        Some(addr) => match local::bind(addr).await {
            Ok(listener) => {
                tracing::info!(address = %addr, "listening");
                local::serve(listener, app).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("cannot listen on {addr}: {e}")),
        },
        None => runtime::run(app).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            tracing::error!("{problem}");
            ExitCode::FAILURE
        }
    }
}

/// `--listen ADDR` (or `--listen=ADDR`) selects the local server.
fn listen_address() -> Result<Option<std::net::SocketAddr>, String> {
    let mut args = std::env::args().skip(1);
    let Some(arg) = args.next() else { return Ok(None) };
    let value = match arg.strip_prefix("--listen") {
        Some("") => args.next().ok_or("--listen needs an address, like 127.0.0.1:8080")?,
        Some(rest) if rest.starts_with('=') => rest[1..].to_owned(),
        _ => return Err(format!("unknown argument `{arg}`; the only one is --listen ADDR")),
    };
    if let Some(extra) = args.next() {
        return Err(format!("unexpected argument `{extra}` after --listen {value}"));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("--listen: `{value}` is not an address like 127.0.0.1:8080"))
}
