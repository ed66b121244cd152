//! `rilld`: the Rill broker daemon.

use clap::Parser;
use rill_broker::config::{Args, Config};
use rill_broker::metrics::{Health, HttpSecurity, serve_http};
use rill_broker::server::Broker;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rilld: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.check {
        return match rill_broker::check::check_data_dir(&config.data_dir, &mut std::io::stdout()) {
            Ok(summary) if summary.intact() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("rilld: check failed: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // openraft narrates every vote and membership step at info; its warnings suffice.
        EnvFilter::new(format!("{},openraft=warn", config.log_level))
    });
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rilld")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rilld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rilld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // The HTTP endpoint comes up first, so /health can answer "recovering" during recovery.
    let health = Arc::new(Health::default());
    let tls = match &config.tls {
        Some(settings) => Some(Arc::new(rill_broker::tls::Reloader::new(settings.clone())?)),
        None => None,
    };
    let security = HttpSecurity {
        tls: tls.clone().filter(|_| config.metrics_tls),
        basic_auth: config.metrics_basic_auth.clone(),
    };
    let http = match config.metrics_addr()? {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
            let bound = listener.local_addr()?;
            println!("rilld metrics listening on {bound}");
            tracing::info!(addr = %bound, "metrics listening");
            Some(tokio::spawn(serve_http(listener, health.clone(), security)))
        }
        None => None,
    };
    let broker = Broker::open(config, tls, shutdown.clone()).await?;
    health.set_ready(broker.context());
    let addr = broker.local_addr()?;
    let data = std::fs::canonicalize(broker.data_dir())
        .unwrap_or_else(|_| broker.data_dir().to_path_buf());
    if let Some(kafka) = broker.kafka_addr() {
        println!("rilld kafka listening on {kafka}");
        tracing::info!(addr = %kafka, "Kafka listener listening");
    }
    // A stable line on stdout that scripts and the end-to-end tests wait for.
    println!("rilld listening on {addr}, data in {}", data.display());
    tracing::info!(%addr, data_dir = %data.display(), "listening");
    tokio::spawn(signals(shutdown));
    let reloaders: Vec<_> = [
        broker.context().tls.clone(),
        broker
            .context()
            .cluster_tls
            .as_ref()
            .map(|t| t.acceptor.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !reloaders.is_empty() {
        tokio::spawn(reload_on_hangup(reloaders));
    }
    let served = broker.serve().await;
    if let Some(http) = http {
        http.abort();
    }
    served
}

/// SIGHUP: read the TLS certificates and keys again (the client listener's, which /metrics
/// shares, and the cluster listener's); new connections get them.
async fn reload_on_hangup(reloaders: Vec<Arc<rill_broker::tls::Reloader>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; certificates reload only on restart");
        return;
    };
    while hangup.recv().await.is_some() {
        for tls in &reloaders {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS reload failed; still serving the previous certificate")
                }
            }
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop rilld with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    shutdown.cancel();
}
