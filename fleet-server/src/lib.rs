//! The Rakkr fleet server.
//!
//! One process runs, each as its own task or thread:
//! - the embedded MQTT broker ([`broker`], rumqttd on its own threads);
//! - the server's MQTT link ([`ingest`]): node presence and telemetry into the
//!   live fleet view ([`fleet`]) and, batched, into the store;
//! - the job desk and the lease-expiry runner ([`jobs`]);
//! - the schedule runner ([`schedules`]): due occurrences become jobs;
//! - the HTTP server ([`http`]): console ([`console`]), assets, API, probes;
//! - the store (`rakkr-store`, redb in `{data_dir}/rakkr.redb`), guarded by the
//!   data-directory lock ([`datadir`]);
//! - operator accounts ([`accounts`]; the first start creates an owner with a
//!   one-time password) and the local admin socket ([`admin`]).
//!
//! Shutdown: cancelling the token stops HTTP (in-flight requests finish), the
//! MQTT link (announces the server offline, disconnects) and the persist task
//! (saves pending statuses); then [`RunningServer::wait`] returns. The embedded
//! broker cannot be stopped and ends with the process.

pub mod accounts;
pub mod accounts_page;
pub mod admin;
pub mod api_tokens;
pub mod arrival;
pub mod audit;
pub mod audit_page;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod console;
pub mod datadir;
pub mod deletion;
pub mod deliveries_page;
pub mod delivery;
pub mod demo;
pub mod destinations;
pub mod early_delivery;
pub mod enrollment_page;
pub mod fleet;
pub mod gate;
pub mod health_page;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod jobs;
pub mod login;
pub mod metrics;
pub mod node_page;
pub mod node_watch;
pub mod openapi;
pub mod policies;
pub mod policy_sync;
pub mod quality;
pub mod recordings_page;
pub mod schedules;
pub mod schedules_page;
pub mod secrets;
pub mod server_retention;
pub mod signal_watch;
pub mod smb;
pub mod tls;
pub mod updates;
pub mod uploads;
pub mod waveform;

use std::net::SocketAddr;
use std::sync::Arc;

use rakkr_mqtt::LinkState;
use rakkr_store::{RedbStore, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ServerSettings;
use crate::datadir::DataDir;
use crate::fleet::LiveFleet;
use crate::ingest::{IngestStats, PendingEvents, PendingStatuses};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("cannot open the store: {0}")]
    Store(#[from] rakkr_store::StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("accounts: {0}")]
    Accounts(#[from] accounts::AccountError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretError),
}

/// A started server: its bound addresses and shared state.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    /// Where the console and API are served over HTTPS, if configured.
    pub https_addr: Option<SocketAddr>,
    /// The broker the server (and its nodes) use.
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The gate's TLS port, when `mqtt.tls_addr` is set.
    pub mqtt_tls_port: Option<u16>,
    pub fleet: Arc<LiveFleet>,
    pub link: Arc<LinkState>,
    pub ingest: Arc<IngestStats>,
    pub jobs: Arc<jobs::JobStats>,
    pub schedules: Arc<schedules::ScheduleStats>,
    pub store: Arc<dyn Store>,
    pub identities: Arc<identity::Identities>,
    pub gate: Arc<gate::GateStats>,
    /// Commands to nodes (job offers, stops), as the API sends them.
    pub commands: jobs::Commands,
    pub data_dir: std::path::PathBuf,
    /// Set on the first start only: the one-time password of the owner
    /// account it created ([`accounts::FIRST_OWNER`]), to print once.
    pub first_owner_password: Option<String>,
    tasks: JoinSet<()>,
    _data_dir: DataDir,
}

impl RunningServer {
    /// Start everything; returns once the broker accepts and HTTP is bound.
    pub async fn start(
        settings: ServerSettings,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Result<RunningServer, ServerError> {
        let data_dir = DataDir::open(&settings.data_dir)?;
        let store_path = data_dir.store_path();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || {
                let store = RedbStore::open(&store_path)?;
                // Owner-only: it holds password and credential hashes.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&store_path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| {
                        rakkr_store::StoreError::Backend(format!("{}: {e}", store_path.display()))
                    })?;
                Ok::<_, rakkr_store::StoreError>(store)
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??,
        );

        let now = clock.unix_ms();
        let records = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.nodes())
                .await
                .map_err(|e| ServerError::Task(e.to_string()))??
        };
        // Nodes could not renew their leases while the server was down, and
        // return over up to one reconnect backoff: give every running lease
        // that long plus a full term from now before expiry runs.
        {
            let store = store.clone();
            let lease_ms =
                (settings.lease + rakkr_protocol::backoff::RECONNECT_CAP).as_millis() as u64;
            let extended = tokio::task::spawn_blocking(move || {
                store.extend_leases_after_downtime(now, lease_ms)
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??;
            if extended > 0 {
                tracing::info!(
                    leases = extended,
                    "running leases extended after the restart"
                );
            }
        }
        let (fleet, restart_changes) =
            LiveFleet::from_records(records, settings.max_connections, now);
        let fleet = Arc::new(fleet);
        let pending = Arc::new(PendingStatuses::default());
        for change in restart_changes {
            pending.push(change);
        }

        let identities = {
            let store = store.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || identity::Identities::load(&*store))
                    .await
                    .map_err(|e| ServerError::Task(e.to_string()))??,
            )
        };
        let admin_socket = admin::bind(&settings.data_dir)?;
        let gate_stats = Arc::new(gate::GateStats::default());
        // The fleet CA and server certificate, when anything is served over TLS.
        let wants_tls = settings.https_addr.is_some()
            || matches!(
                settings.mqtt,
                config::MqttMode::Embedded {
                    tls_addr: Some(_),
                    ..
                }
            );
        let server_tls = if wants_tls {
            let dir = settings.data_dir.join("tls");
            let names = settings.tls_names.clone();
            let tls =
                tokio::task::spawn_blocking(move || tls::ServerTls::load_or_create(&dir, &names))
                    .await
                    .map_err(|e| ServerError::Task(e.to_string()))??;
            tracing::info!(ca_sha256 = %tls.ca_sha256, "serving TLS with the fleet CA");
            Some(tls)
        } else {
            None
        };
        // HTTP is bound before the embedded broker picks its internal port
        // (port 0): on a restart at the same address the kernel could hand
        // the broker the HTTP port just freed (a test caught it).
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| ServerError::HttpBind {
                addr: settings.http_addr,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| ServerError::HttpBind {
                addr: settings.http_addr,
                source,
            })?;
        // (where the server's own link connects, where clients connect, credentials)
        let mut gate_listener = None;
        let ((link_host, link_port), (public_host, public_port), credentials) = match settings
            .mqtt
            .clone()
        {
            config::MqttMode::Embedded {
                addr,
                node_auth,
                readers,
                tls_addr,
            } => {
                let max_connections = settings.max_connections;
                let broker_addr = match node_auth {
                    config::NodeAuth::None => addr,
                    // The broker itself only on loopback, on a port of its own;
                    // clients reach it through the gate.
                    config::NodeAuth::Credentials => SocketAddr::from(([127, 0, 0, 1], 0)),
                };
                // The gate's listeners are bound before the broker picks its
                // internal port (port 0), so the kernel cannot hand the broker
                // the port the gate is about to take.
                let gate_bound = match node_auth {
                    config::NodeAuth::None => None,
                    config::NodeAuth::Credentials => {
                        let listener = std::net::TcpListener::bind(addr)
                            .and_then(|l| l.set_nonblocking(true).map(|()| l))
                            .and_then(tokio::net::TcpListener::from_std)
                            .map_err(|source| broker::BrokerError::Bind { addr, source })?;
                        let public = listener
                            .local_addr()
                            .map_err(|source| broker::BrokerError::Bind { addr, source })?;
                        let tls_listener = match tls_addr {
                            None => None,
                            Some(tls_addr) => {
                                let listener = std::net::TcpListener::bind(tls_addr)
                                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                                    .and_then(tokio::net::TcpListener::from_std)
                                    .map_err(|source| broker::BrokerError::Bind {
                                        addr: tls_addr,
                                        source,
                                    })?;
                                if let Ok(a) = listener.local_addr() {
                                    tracing::info!(addr = %a, "MQTT over TLS listening");
                                }
                                Some(listener)
                            }
                        };
                        Some((listener, public, tls_listener))
                    }
                };
                let broker = tokio::task::spawn_blocking(move || {
                    broker::EmbeddedBroker::start(broker_addr, max_connections)
                })
                .await
                .map_err(|e| ServerError::Task(e.to_string()))??;
                let public = match gate_bound {
                    None => {
                        tracing::warn!(addr = %broker.addr, "embedded MQTT broker listening WITHOUT authentication (node_auth = \"none\")");
                        broker.addr
                    }
                    Some((listener, public, tls_listener)) => {
                        gate_listener =
                            Some((listener, broker.in_process.clone(), readers, tls_listener));
                        tracing::info!(addr = %public, broker = %broker.addr, "MQTT gate listening; embedded broker behind it (in-process)");
                        public
                    }
                };
                let at = |a: SocketAddr| (a.ip().to_string(), a.port());
                (at(broker.addr), at(public), None)
            }
            config::MqttMode::External {
                host,
                port,
                credentials,
            } => {
                tracing::info!(broker = %format!("{host}:{port}"), "using an external MQTT broker");
                ((host.clone(), port), (host, port), credentials)
            }
        };

        let link = Arc::new(LinkState::default());
        let stats = Arc::new(IngestStats::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(admin::serve(
            admin_socket,
            settings.data_dir.clone(),
            store.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(ingest::persist(
            pending.clone(),
            store.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
        let job_stats = Arc::new(jobs::JobStats::default());
        let (commands, outbound) = jobs::Commands::new(job_stats.clone());
        let (job_inbox, job_reports) = tokio::sync::mpsc::channel(jobs::JOB_QUEUE);
        tasks.spawn(ingest::run(
            ingest::Broker {
                host: link_host,
                port: link_port,
                credentials,
            },
            ingest::Sinks {
                fleet: fleet.clone(),
                pending,
                events: Arc::new(PendingEvents::default()),
                jobs: job_inbox,
                commands: commands.clone(),
                stats: stats.clone(),
            },
            outbound,
            store.clone(),
            clock.clone(),
            link.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(jobs::run_desk(
            job_reports,
            store.clone(),
            commands.clone(),
            clock.clone(),
            settings.lease,
            job_stats.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(jobs::run_lease_expiry(
            store.clone(),
            clock.clone(),
            job_stats.clone(),
            shutdown.clone(),
        ));
        {
            // Before the runner starts: schedules record with their profiles
            // and policies as configured now.
            let (store, profiles, policies, now) = (
                store.clone(),
                settings.profiles.clone(),
                settings.watchdog.clone(),
                clock.unix_ms(),
            );
            match tokio::task::spawn_blocking(move || {
                schedules::follow_policies(&*store, &profiles, &policies, now)
            })
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "schedules not brought to their profiles")
                }
                Err(e) => tracing::error!(error = %e, "profile task failed"),
            }
        }
        let schedule_stats = Arc::new(schedules::ScheduleStats::default());
        tasks.spawn(schedules::run(
            store.clone(),
            Arc::new(settings.profiles.clone()),
            commands.clone(),
            clock.clone(),
            schedule_stats.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(node_watch::run(
            settings.node_rules,
            fleet.clone(),
            store.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
        let secrets = Arc::new(secrets::SecretBox::open_or_create(
            &settings.secrets_key_file,
        )?);
        let delivery_policies = Arc::new(settings.delivery.clone());
        let uploads = Arc::new(uploads::Uploads::new(
            &settings.data_dir,
            settings.max_upload_bytes,
        ));
        let delivery_wake = Arc::new(tokio::sync::Notify::new());
        let delivered = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(
            delivery::DeliveryRunner {
                store: store.clone(),
                policies: delivery_policies.clone(),
                secrets: secrets.clone(),
                uploads: uploads.clone(),
                clock: clock.clone(),
                wake: delivery_wake.clone(),
                delivered: delivered.clone(),
            }
            .run(shutdown.clone()),
        );
        {
            let (uploads, shutdown) = (uploads.clone(), shutdown.clone());
            tasks.spawn(async move {
                shutdown.cancelled().await;
                uploads.followers.close_all();
                uploads.early.close(std::time::Duration::from_secs(5)).await;
            });
        }
        tasks.spawn(
            server_retention::ServerRetention {
                store: store.clone(),
                policies: delivery_policies.clone(),
                uploads: uploads.clone(),
                clock: clock.clone(),
                cap_bytes: settings.cache_max_bytes,
                wake: delivered,
            }
            .run(shutdown.clone()),
        );
        let watchdog_policies = Arc::new(settings.watchdog.clone());
        let retention_policies = Arc::new(settings.retention.clone());
        tasks.spawn(signal_watch::run(
            watchdog_policies.clone(),
            fleet.clone(),
            store.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
        let update_sync = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(updates::run_sync(
            store.clone(),
            fleet.clone(),
            commands.clone(),
            update_sync.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(policy_sync::run(
            watchdog_policies.clone(),
            retention_policies.clone(),
            fleet.clone(),
            store.clone(),
            commands.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(schedules::run_sync(
            store.clone(),
            commands.clone(),
            shutdown.clone(),
        ));
        let mut ca = None;
        // Refusals audited per client address and minute: HTTP and the MQTT gate
        // each have a budget, so a noisy node behind a site's NAT cannot crowd
        // out the record of someone guessing passwords from the same address.
        let audit_budget = || {
            Arc::new(audit::AnonymousBudget::new(
                settings.anonymous_audit_per_minute,
            ))
        };
        let mut mqtt_tls_port = None;
        if let Some((listener, upstream, readers, tls_listener)) = gate_listener {
            let gate = Arc::new(gate::Gate {
                upstream,
                connect_wait: gate::CONNECT_WAIT,
                identities: identities.clone(),
                readers,
                store: store.clone(),
                clock: clock.clone(),
                stats: gate_stats.clone(),
                audit_budget: audit_budget(),
            });
            tasks.spawn(gate::run(listener, None, gate.clone(), shutdown.clone()));
            if let (Some(listener), Some(tls)) = (tls_listener, &server_tls) {
                mqtt_tls_port = listener.local_addr().ok().map(|a| a.port());
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                tasks.spawn(gate::run(listener, Some(acceptor), gate, shutdown.clone()));
            }
        }
        if let Some(tls) = &server_tls {
            ca = Some(Arc::new(http::CaInfo {
                pem: tls.ca_pem.clone(),
                sha256: tls.ca_sha256.clone(),
            }));
        }
        let app = http::router(http::AppState {
            fleet: fleet.clone(),
            store: store.clone(),
            link: link.clone(),
            clock,
            stale_after: settings.stale_after,
            commands: commands.clone(),
            identities: identities.clone(),
            ingest: stats.clone(),
            jobs: job_stats.clone(),
            schedules: schedule_stats.clone(),
            gate: gate_stats.clone(),
            ca,
            logins: Arc::default(),
            audit_budget: audit_budget(),
            secure_cookies: settings.https_addr.is_some(),
            live_streams: Default::default(),
            http_stats: Default::default(),
            watchdog_policies,
            retention_policies,
            profiles: Arc::new(settings.profiles.clone()),
            uploads,
            secrets,
            delivery_policies,
            delivery_wake,
            images_dir: updates::images_dir(&settings.data_dir),
            update_sync,
        });
        let mut https_addr = None;
        if let (Some(addr), Some(tls)) = (settings.https_addr, &server_tls) {
            let bound = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::HttpBind { addr, source })?;
            let listener = tls::TlsListener::new(
                bound,
                tls.config.clone(),
                gate::CONNECT_WAIT,
                shutdown.clone(),
            )
            .map_err(|source| ServerError::HttpBind { addr, source })?;
            https_addr = Some(
                axum::serve::Listener::local_addr(&listener)
                    .map_err(|source| ServerError::HttpBind { addr, source })?,
            );
            let (app, https_shutdown) = (app.clone(), shutdown.clone());
            tasks.spawn(async move {
                // Client addresses for the login limiter.
                let app = app.into_make_service_with_connect_info::<tls::PeerAddr>();
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(https_shutdown.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            });
            tracing::info!(addr = ?https_addr, "HTTPS listening");
        }
        let http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let app = app.into_make_service_with_connect_info::<tls::PeerAddr>();
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(addr = %http_addr, "HTTP listening");

        // Last, once everything is bound: a start that fails earlier must not
        // create an owner whose one-time password nobody got to see.
        let first_owner_password = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || accounts::ensure_first_owner(&*store, now))
                .await
                .map_err(|e| ServerError::Task(e.to_string()))??
        };
        if first_owner_password.is_none()
            && let Ok(Some(owner)) = store.user(accounts::FIRST_OWNER)
            && owner.must_change_password
            && !owner.disabled
        {
            tracing::info!(
                "the account \"{}\" still has its one-time password; if it is lost: `rakkr-server user reset-password {}`",
                accounts::FIRST_OWNER,
                accounts::FIRST_OWNER
            );
        }

        Ok(RunningServer {
            http_addr,
            https_addr,
            mqtt_host: public_host,
            mqtt_port: public_port,
            mqtt_tls_port,
            identities,
            gate: gate_stats,
            fleet,
            link,
            ingest: stats,
            jobs: job_stats,
            schedules: schedule_stats,
            store,
            commands,
            data_dir: settings.data_dir.clone(),
            first_owner_password,
            tasks,
            _data_dir: data_dir,
        })
    }

    /// Wait until every task has stopped (after the shutdown token fired).
    pub async fn wait(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "server task panicked");
            }
        }
    }
}
