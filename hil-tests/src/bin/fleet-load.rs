//! Benchmark: a fleet of simulated appliances (no audio) against the fleet
//! server with its embedded broker, beside Debian's mosquitto carrying the
//! same load.
//!
//! ```sh
//! cargo build --release -p rakkr-server -p rakkr-agent
//! cargo build --release -p rakkr-hil-tests --bin fleet-load
//! ulimit -n 20000   # the hard limit; children (server, mosquitto) inherit it
//! RAKKR_BIN_DIR=target/release target/release/fleet-load --nodes 1000 --runs 3 \
//!     --seconds 25 --target all --claims-per-sec 25
//! ```
//!
//! Each simulated appliance is one TCP connection speaking MQTT 3.1.1, encoded
//! by hand here (no rakkr-agent, no audio pipeline): it connects (client id =
//! user name = node id, password = its credential enrolled through the API;
//! anonymous on mosquitto) with its Last Will, publishes a retained online
//! status (2 channels, codecs `flac`, `max_jobs` 1), subscribes to its
//! `cmd/#`, then publishes a 2-channel meter frame (QoS 0) once per second,
//! the nodes' phases spread evenly over the second. A few "ticker" threads
//! write the meter frames; each connection has one blocked reader thread
//! (small stack) that answers what the broker sends: a `wake` on `cmd/jobs`
//! is answered with a QoS 1 `claim`, and the time from publishing the claim to
//! receiving the `offer` is recorded.
//!
//! Targets:
//! - `rakkr`: `rakkr-server serve`, default `node_auth = "credentials"`
//!   (every node through the authorizing gate: 3 server fds per node);
//! - `rakkr-noauth`: the same with `node_auth = "none"` (rumqttd direct, 1 fd per node);
//! - `mosquitto`: mosquitto alone (`allow_anonymous true`, `persistence false`)
//!   plus one "reference server" connection subscribed like the server's link
//!   (status, meters, events, jobs); it counts the meter frames it receives and
//!   answers each claim with an offer at once (no store), and publishes the
//!   wakes. Its claim latency is therefore the broker round trip alone.
//!
//! Measured over the window (after every node is online and a warm-up):
//! meter frames sent by the generator and ingested (rakkr: the delta of
//! `rakkr_mqtt_meter_frames_total`; mosquitto: frames the reference
//! subscriber received), claim latency (claim → offer, and job creation →
//! offer) p50/p99/max, VmRSS/VmHWM of the broker process at the end, CPU of the
//! broker process, of the generator and of the whole machine.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rakkr_hil_tests::*;
use rakkr_protocol::Envelope;
use rakkr_protocol::JobId;
use rakkr_protocol::job::{JobCommand, JobReport, JobSpec, RecordingProfile};
use rakkr_protocol::payload::{BootSlot, ChannelMeter, MeterFrame, NodeStatus, OfflineReason};

/// MQTT keep-alive of the simulated appliances (the agent's default is 5 s).
const KEEP_ALIVE_S: u16 = 10;
/// Stack of each connection's reader thread.
const READER_STACK: usize = 128 * 1024;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 packets, by hand.

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT, clean session; the will is retained at QoS 1.
fn connect_packet(
    client_id: &str,
    keep_alive_s: u16,
    login: Option<(&str, &str)>,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut flags = 0x02u8;
    if login.is_some() {
        flags |= 0x80 | 0x40;
    }
    if will.is_some() {
        flags |= 0x04 | (1 << 3) | 0x20;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((topic, message)) = will {
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, message);
    }
    if let Some((user, password)) = login {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

fn publish_packet(topic: &str, payload: &[u8], qos: u8, retain: bool, pid: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

fn subscribe_packet(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_str(&mut body, filter.as_bytes());
        body.push(*qos);
    }
    packet(0x82, &body)
}

fn puback(pid: u16) -> [u8; 4] {
    let [hi, lo] = pid.to_be_bytes();
    [0x40, 0x02, hi, lo]
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// The first complete packet in `buf`: (first byte, body start, packet length).
fn next_frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (mut len, mut shift, mut i) = (0usize, 0u32, 1usize);
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("bad remaining length");
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((buf[0], i, i + len)))
}

/// A PUBLISH body: (topic, packet id if QoS > 0, payload).
fn parse_publish(first: u8, body: &[u8]) -> Option<(&str, Option<u16>, &[u8])> {
    let tlen = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + tlen)?).ok()?;
    let mut rest = &body[2 + tlen..];
    let pid = if (first >> 1) & 3 > 0 {
        let pid = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        rest = &rest[2..];
        Some(pid)
    } else {
        None
    };
    Some((topic, pid, rest))
}

// ---------------------------------------------------------------------------
// Connections.

/// One MQTT connection: reads on its own thread, writes from any thread.
struct Conn {
    stream: TcpStream,
    wlock: Mutex<()>,
    next_pid: AtomicU16,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            wlock: Mutex::new(()),
            next_pid: AtomicU16::new(10),
        }
    }

    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        let _guard = self.wlock.lock().unwrap_or_else(|e| e.into_inner());
        (&self.stream).write_all(bytes)
    }

    fn pid(&self) -> u16 {
        loop {
            let p = self.next_pid.fetch_add(1, Ordering::Relaxed);
            if p != 0 {
                return p;
            }
        }
    }
}

/// Connect, send CONNECT and wait for an accepting CONNACK.
fn open(port: u16, connect: &[u8], wait: Duration) -> Result<Conn> {
    let stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(wait))?;
    (&stream).write_all(connect).context("send CONNECT")?;
    let mut connack = [0u8; 4];
    (&stream)
        .read_exact(&mut connack)
        .context("no CONNACK (refused, or timed out)")?;
    if connack != [0x20, 0x02, 0x00, 0x00] && connack != [0x20, 0x02, 0x01, 0x00] {
        bail!("CONNACK refused: {connack:02x?}");
    }
    stream.set_read_timeout(None)?;
    Ok(Conn::new(stream))
}

/// Read packets until the connection ends, passing each to `handle`; why it ended.
fn read_loop(conn: &Conn, mut handle: impl FnMut(u8, &[u8])) -> String {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        let n = match (&conn.stream).read(&mut tmp) {
            Ok(0) => return "end of stream".into(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("read: {e}"),
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut off = 0;
        loop {
            match next_frame(&buf[off..]) {
                Ok(Some((first, start, total))) => {
                    handle(first, &buf[off + start..off + total]);
                    off += total;
                }
                Ok(None) => break,
                Err(e) => return format!("{e}"),
            }
        }
        buf.drain(..off);
    }
}

// ---------------------------------------------------------------------------
// The simulated fleet.

#[derive(Default)]
struct ClaimTiming {
    /// When the job was created (POST) or the wake published (mosquitto).
    created: Option<Instant>,
    /// When the node published its claim.
    claimed: Option<Instant>,
}

struct Sim {
    id: String,
    meters_topic: String,
    jobs_topic: String,
    conn: Conn,
    subscribed: AtomicBool,
    /// Milliseconds since the run's epoch of the last write.
    last_write_ms: AtomicU64,
    claim: Mutex<ClaimTiming>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    pings: AtomicU64,
    /// Largest lateness of a meter frame against its slot, µs.
    max_lag_us: AtomicU64,
    disconnects: AtomicU64,
    suback_failures: AtomicU64,
    wakes: AtomicU64,
    claims: AtomicU64,
    offers: AtomicU64,
    /// Jobs created (rakkr: POST answered 201; mosquitto: wake published).
    created: AtomicU64,
    create_errors: AtomicU64,
    readers_alive: AtomicUsize,
}

/// (claim → offer, creation → offer), µs, for offers of jobs created in the window.
type Latencies = Mutex<Vec<(u64, u64)>>;

struct Fleet {
    slots: Vec<OnceLock<Arc<Sim>>>,
    epoch: Instant,
    stop: AtomicBool,
    c: Counters,
    latencies: Latencies,
}

impl Fleet {
    fn since_epoch_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

fn status_payload() -> Vec<u8> {
    Envelope::stamped(
        unix_ms(),
        NodeStatus::Online {
            agent_version: "fleet-load".into(),
            slot: BootSlot::None,
            capabilities: rakkr_hil_tests::synthetic_capabilities(),
            realtime: Default::default(),
        },
    )
    .encode()
}

fn meter_payload() -> Vec<u8> {
    let channel = ChannelMeter {
        peak_dbfs: -12.5,
        rms_dbfs: -23.25,
        ..Default::default()
    };
    Envelope::stamped(
        unix_ms(),
        MeterFrame {
            captured_at_ms: unix_ms(),
            window_ms: 1000,
            sample_rate: 48_000,
            channels: vec![channel; 2],
            counters: None,
        },
    )
    .encode()
}

/// What a node does with a packet from the broker.
fn node_handle(fleet: &Fleet, sim: &Sim, first: u8, body: &[u8]) {
    match first >> 4 {
        9 => {
            if body.get(2..).is_some_and(|codes| codes.contains(&0x80)) {
                fleet.c.suback_failures.fetch_add(1, Ordering::Relaxed);
            }
            sim.subscribed.store(true, Ordering::Release);
        }
        3 => {
            let Some((_topic, pid, payload)) = parse_publish(first, body) else {
                return;
            };
            if let Some(pid) = pid {
                let _ = sim.conn.send(&puback(pid));
            }
            match Envelope::<JobCommand>::decode(payload).map(|e| e.body) {
                Ok(JobCommand::Wake) => {
                    fleet.c.wakes.fetch_add(1, Ordering::Relaxed);
                    let claim = Envelope::stamped(
                        unix_ms(),
                        JobReport::Claim {
                            free_slots: 1,
                            held: Vec::new(),
                        },
                    )
                    .encode();
                    let bytes = publish_packet(&sim.jobs_topic, &claim, 1, false, sim.conn.pid());
                    sim.claim.lock().unwrap_or_else(|e| e.into_inner()).claimed =
                        Some(Instant::now());
                    if sim.conn.send(&bytes).is_ok() {
                        fleet.c.claims.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(JobCommand::Offer { .. }) => {
                    let now = Instant::now();
                    fleet.c.offers.fetch_add(1, Ordering::Relaxed);
                    let t = sim.claim.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(created), Some(claimed)) = (t.created, t.claimed) {
                        fleet
                            .latencies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((
                                (now - claimed).as_micros() as u64,
                                (now - created).as_micros() as u64,
                            ));
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// Connect node `i` and start its reader.
fn start_node(fleet: &Arc<Fleet>, i: usize, port: u16, password: Option<&str>) -> Result<()> {
    let id = format!("sim-{i:05}");
    let status_topic = format!("rakkr/v1/nodes/{id}/status");
    let will = Envelope::stamped(
        unix_ms(),
        NodeStatus::Offline {
            reason: OfflineReason::ConnectionLost,
        },
    )
    .encode();
    let login = password.map(|p| (id.as_str(), p));
    let conn = open(
        port,
        &connect_packet(&id, KEEP_ALIVE_S, login, Some((&status_topic, &will))),
        Duration::from_secs(20),
    )?;
    conn.send(&publish_packet(
        &status_topic,
        &status_payload(),
        1,
        true,
        1,
    ))?;
    conn.send(&subscribe_packet(
        2,
        &[(&format!("rakkr/v1/nodes/{id}/cmd/#"), 1)],
    ))?;
    let sim = Arc::new(Sim {
        meters_topic: format!("rakkr/v1/nodes/{id}/meters"),
        jobs_topic: format!("rakkr/v1/nodes/{id}/jobs"),
        id,
        conn,
        subscribed: AtomicBool::new(false),
        last_write_ms: AtomicU64::new(fleet.since_epoch_ms()),
        claim: Mutex::new(ClaimTiming::default()),
    });
    let (f, s) = (fleet.clone(), sim.clone());
    fleet.c.readers_alive.fetch_add(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name(format!("r{i}"))
        .stack_size(READER_STACK)
        .spawn(move || {
            let _ = read_loop(&s.conn, |first, body| node_handle(&f, &s, first, body));
            if !f.stop.load(Ordering::Relaxed) {
                f.c.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            f.c.readers_alive.fetch_sub(1, Ordering::Relaxed);
        })
        .context("spawn reader")?;
    let _ = fleet.slots[i].set(sim);
    Ok(())
}

/// Send the meter frames of nodes `k`, `k + step`, … once per second each,
/// node `i` at `i / n` of each second.
fn ticker(fleet: Arc<Fleet>, k: usize, step: usize) {
    let n = fleet.slots.len();
    let mine: Vec<usize> = (k..n).step_by(step).collect();
    let mut second = 0u64;
    while !fleet.stop.load(Ordering::Relaxed) {
        for &i in &mine {
            let due = fleet.epoch
                + Duration::from_secs(second)
                + Duration::from_micros((i as u64 * 1_000_000) / n as u64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            } else if now > due {
                fleet
                    .c
                    .max_lag_us
                    .fetch_max((now - due).as_micros() as u64, Ordering::Relaxed);
            }
            if fleet.stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(sim) = fleet.slots[i].get() else {
                continue;
            };
            let frame = publish_packet(&sim.meters_topic, &meter_payload(), 0, false, 0);
            match sim.conn.send(&frame) {
                Ok(()) => {
                    fleet.c.sent.fetch_add(1, Ordering::Relaxed);
                    sim.last_write_ms
                        .store(fleet.since_epoch_ms(), Ordering::Relaxed);
                }
                Err(_) => {
                    fleet.c.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        second += 1;
        // Keep-alive: meters keep every live connection busy; ping any that is not.
        if second.is_multiple_of(u64::from(KEEP_ALIVE_S / 2)) {
            let now = fleet.since_epoch_ms();
            for &i in &mine {
                if let Some(sim) = fleet.slots[i].get()
                    && now.saturating_sub(sim.last_write_ms.load(Ordering::Relaxed))
                        > u64::from(KEEP_ALIVE_S) * 500
                    && sim.conn.send(&PINGREQ).is_ok()
                {
                    fleet.c.pings.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The reference "server" on mosquitto: subscribed like the server's link.

#[derive(Default)]
struct RefCounters {
    meters: AtomicU64,
    statuses: AtomicU64,
    offers_sent: AtomicU64,
}

fn ref_offer(now_ms: u64) -> Vec<u8> {
    Envelope::stamped(
        now_ms,
        JobCommand::Offer {
            job_id: JobId::new(now_ms),
            lease_id: 1,
            lease_ms: 30_000,
            spec: JobSpec {
                device: "default".into(),
                channels: None,
                profile: RecordingProfile::default(),
                duration_s: Some(5),
                watchdog: None,
            },
        },
    )
    .encode()
}

fn start_reference(port: u16) -> Result<(Arc<Conn>, Arc<RefCounters>)> {
    let conn = Arc::new(open(
        port,
        // Keep-alive off: it may sit silent while it waits.
        &connect_packet("fleet-load-reference", 0, None, None),
        Duration::from_secs(10),
    )?);
    conn.send(&subscribe_packet(
        1,
        &[
            ("rakkr/v1/nodes/+/status", 1),
            ("rakkr/v1/nodes/+/meters", 0),
            ("rakkr/v1/nodes/+/events", 1),
            ("rakkr/v1/nodes/+/jobs", 1),
        ],
    ))?;
    let counters = Arc::new(RefCounters::default());
    let (c, k) = (conn.clone(), counters.clone());
    std::thread::Builder::new()
        .name("reference".into())
        .spawn(move || {
            let why = read_loop(&c, |first, body| {
                if first >> 4 != 3 {
                    return;
                }
                let Some((topic, pid, payload)) = parse_publish(first, body) else {
                    return;
                };
                if let Some(pid) = pid {
                    let _ = c.send(&puback(pid));
                }
                let mut levels = topic.rsplitn(3, '/');
                let (channel, node) = (levels.next(), levels.next());
                match (channel, node) {
                    (Some("meters"), _) => {
                        k.meters.fetch_add(1, Ordering::Relaxed);
                    }
                    (Some("status"), _) => {
                        k.statuses.fetch_add(1, Ordering::Relaxed);
                    }
                    (Some("jobs"), Some(node)) => {
                        if let Ok(Envelope {
                            body: JobReport::Claim { .. },
                            ..
                        }) = Envelope::<JobReport>::decode(payload)
                        {
                            let topic = format!("rakkr/v1/nodes/{node}/cmd/jobs");
                            let offer =
                                publish_packet(&topic, &ref_offer(unix_ms()), 1, false, c.pid());
                            if c.send(&offer).is_ok() {
                                k.offers_sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
            });
            eprintln!("  reference connection ended: {why}");
        })?;
    Ok((conn, counters))
}

// ---------------------------------------------------------------------------
// Measuring processes.

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu[3] + cpu[4];
    Ok((total - idle, total))
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn max_open_files(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                })
        })
        .unwrap_or_else(|| "?".into())
}

fn metrics(server: &Server) -> Result<HashMap<String, f64>> {
    let (code, body) = server.get_api("/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_owned(), v.parse().ok()?))
        })
        .collect())
}

// ---------------------------------------------------------------------------
// A run.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Rakkr,
    RakkrNoauth,
    Mosquitto,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Rakkr => "rakkr",
            Target::RakkrNoauth => "rakkr-noauth",
            Target::Mosquitto => "mosquitto",
        }
    }
}

struct Opts {
    nodes: usize,
    runs: usize,
    seconds: u64,
    warmup: u64,
    targets: Vec<Target>,
    claims_per_sec: f64,
    tickers: usize,
    connectors: usize,
    max_connections: Option<usize>,
    /// Add `set_tcp_nodelay true` to mosquitto's configuration.
    mosquitto_nodelay: bool,
}

#[derive(Clone, Debug, Default)]
struct RunResult {
    connected: usize,
    enroll_s: f64,
    connect_s: f64,
    sent_per_s: f64,
    ingested_per_s: f64,
    drop_pct: f64,
    dropped: i64,
    created: u64,
    offers: u64,
    claim_p50_ms: f64,
    claim_p99_ms: f64,
    claim_max_ms: f64,
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    broker_cpu: f64,
    gen_cpu: f64,
    machine_cpu: f64,
    max_lag_ms: f64,
    notes: String,
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Enroll `ids` through the API (8 at a time): their credentials.
fn enroll_all(server: &Server, ids: &[String]) -> Result<Vec<String>> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let out: Vec<Mutex<Option<String>>> = ids.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ids.len() {
                        return;
                    }
                    let enroll = || -> Result<String> {
                        let token: serde_json::Value = client
                            .post(server.url("/api/v1/enroll-tokens"))
                            .bearer_auth(&server.api_token)
                            .json(&serde_json::json!({"node": ids[i]}))
                            .send()?
                            .json()?;
                        let enrolled: serde_json::Value = client
                            .post(server.url("/api/v1/enroll"))
                            .json(&serde_json::json!({"token": token["token"], "node": ids[i]}))
                            .send()?
                            .json()?;
                        enrolled["credential"]
                            .as_str()
                            .map(str::to_owned)
                            .with_context(|| format!("cannot enroll {}: {enrolled}", ids[i]))
                    };
                    match enroll() {
                        Ok(c) => *out[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(out
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_default()
        })
        .collect())
}

enum Broker {
    Rakkr(Server),
    Mosquitto {
        proc: Proc,
        conn: Arc<Conn>,
        counters: Arc<RefCounters>,
    },
}

fn run_once(target: Target, o: &Opts, run: usize) -> Result<RunResult> {
    let work = tempfile::tempdir()?;
    let n = o.nodes;
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    let mut r = RunResult::default();
    let (broker, port, passwords) = match target {
        Target::Rakkr | Target::RakkrNoauth => {
            let mqtt_port = free_port();
            let auth = if target == Target::Rakkr {
                "credentials"
            } else {
                "none"
            };
            let mut toml =
                format!("[mqtt]\naddr = \"127.0.0.1:{mqtt_port}\"\nnode_auth = \"{auth}\"\n");
            if let Some(m) = o.max_connections {
                toml.push_str(&format!("max_connections = {m}\n"));
            }
            let config = work.path().join("server.toml");
            std::fs::write(&config, toml)?;
            let server = Server::start_with_config(
                work.path(),
                &work.path().join("data"),
                &config,
                mqtt_port,
            )?;
            let passwords = if target == Target::Rakkr {
                let t = Instant::now();
                let p = enroll_all(&server, &ids)?;
                r.enroll_s = t.elapsed().as_secs_f64();
                Some(p)
            } else {
                None
            };
            (Broker::Rakkr(server), mqtt_port, passwords)
        }
        Target::Mosquitto => {
            let port = free_port();
            let conf = work.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{}",
                    if o.mosquitto_nodelay {
                        "set_tcp_nodelay true\n"
                    } else {
                        ""
                    }
                ),
            )?;
            let mut cmd = Command::new("mosquitto");
            cmd.arg("-c").arg(&conf);
            let proc = Proc::spawn("mosquitto", cmd, work.path())?;
            wait_for("mosquitto listening", Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            })?;
            let (conn, counters) = start_reference(port)?;
            (
                Broker::Mosquitto {
                    proc,
                    conn,
                    counters,
                },
                port,
                None,
            )
        }
    };
    let broker_pid = match &broker {
        Broker::Rakkr(s) => s.proc.pid(),
        Broker::Mosquitto { proc, .. } => proc.pid(),
    };
    println!(
        "  [{} run {run}] broker pid {broker_pid}, max open files {} (generator {}){}",
        target.name(),
        max_open_files(&broker_pid.to_string()),
        max_open_files("self"),
        if r.enroll_s > 0.0 {
            format!(", enrolled {n} nodes in {:.1} s", r.enroll_s)
        } else {
            String::new()
        }
    );

    let fleet = Arc::new(Fleet {
        slots: (0..n).map(|_| OnceLock::new()).collect(),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        c: Counters::default(),
        latencies: Mutex::new(Vec::new()),
    });
    let tickers: Vec<_> = (0..o.tickers)
        .map(|k| {
            let f = fleet.clone();
            let step = o.tickers;
            std::thread::Builder::new()
                .name(format!("ticker{k}"))
                .spawn(move || ticker(f, k, step))
        })
        .collect::<std::io::Result<_>>()?;

    // Connect every node, `connectors` at a time.
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..o.connectors {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let password = passwords.as_ref().map(|p| p[i].as_str());
                    if let Err(e) = start_node(&fleet, i, port, password) {
                        errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{}: {e:#}", ids[i]));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    r.connected = fleet.slots.iter().filter(|s| s.get().is_some()).count();
    if !errors.is_empty() {
        let mut kinds: HashMap<String, usize> = HashMap::new();
        for e in &errors {
            let kind = e.split_once(": ").map_or(e.as_str(), |(_, k)| k);
            *kinds.entry(kind.to_owned()).or_default() += 1;
        }
        let text = format!("{} connects failed: {kinds:?}", errors.len());
        println!("  {text}");
        r.notes.push_str(&text);
    }
    let subscribed = wait_for("SUBACKs", Duration::from_secs(120), || {
        let s = fleet
            .slots
            .iter()
            .filter(|s| {
                s.get()
                    .is_some_and(|s| s.subscribed.load(Ordering::Acquire))
            })
            .count();
        (s == r.connected).then_some(s)
    });
    r.connect_s = t.elapsed().as_secs_f64();
    if let Err(e) = subscribed {
        println!("  {e}");
    }
    // The broker side sees every node online.
    let online = wait_for("every node online", Duration::from_secs(120), || {
        let seen = match &broker {
            Broker::Rakkr(s) => metrics(s)
                .ok()?
                .get("rakkr_nodes{presence=\"online\"}")
                .copied()? as usize,
            Broker::Mosquitto { counters, .. } => {
                counters.statuses.load(Ordering::Relaxed) as usize
            }
        };
        (seen >= r.connected).then_some(seen)
    });
    println!(
        "  connected {}/{n} in {:.1} s (to SUBACK); broker sees online: {}; fds of broker {}",
        r.connected,
        r.connect_s,
        match &online {
            Ok(v) => v.to_string(),
            Err(e) => e.to_string(),
        },
        open_fds(broker_pid).unwrap_or(0),
    );
    std::thread::sleep(Duration::from_secs(o.warmup));

    // The window.
    let clk = clk_tck();
    let ingested = |broker: &Broker| -> Result<(f64, HashMap<String, f64>)> {
        Ok(match broker {
            Broker::Rakkr(s) => {
                let m = metrics(s)?;
                (
                    m.get("rakkr_mqtt_meter_frames_total")
                        .copied()
                        .unwrap_or(0.0),
                    m,
                )
            }
            Broker::Mosquitto { counters, .. } => (
                counters.meters.load(Ordering::Relaxed) as f64,
                HashMap::new(),
            ),
        })
    };
    let (in0, m0) = ingested(&broker)?;
    let sent0 = fleet.c.sent.load(Ordering::Relaxed);
    let (bcpu0, gcpu0, mach0) = (
        proc_ticks(&broker_pid.to_string())?,
        proc_ticks("self")?,
        machine_ticks()?,
    );
    fleet.c.max_lag_us.store(0, Ordering::Relaxed);
    let t0 = Instant::now();
    let window = Duration::from_secs(o.seconds);

    // Claims: jobs for a random sample of nodes, each node at most once.
    let mut sample: Vec<usize> = (0..n).filter(|&i| fleet.slots[i].get().is_some()).collect();
    Rng(0x9E37_79B9_7F4A_7C15 ^ ((run as u64 + 1) * 7919)).shuffle(&mut sample);
    let planned = ((o.claims_per_sec * o.seconds as f64) as usize).min(sample.len());
    sample.truncate(planned);
    let drivers = 4usize;
    std::thread::scope(|s| -> Result<()> {
        for k in 0..drivers {
            let (fleet, sample, broker) = (&fleet, &sample, &broker);
            s.spawn(move || {
                // Only the fleet server needs HTTP.
                let client = matches!(broker, Broker::Rakkr(_)).then(|| {
                    reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("HTTP client")
                });
                for j in (k..sample.len()).step_by(drivers) {
                    let due = t0 + Duration::from_secs_f64(j as f64 / o.claims_per_sec);
                    if due >= t0 + window {
                        return;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let Some(sim) = fleet.slots[sample[j]].get() else {
                        continue;
                    };
                    sim.claim.lock().unwrap_or_else(|e| e.into_inner()).created =
                        Some(Instant::now());
                    let ok = match broker {
                        Broker::Rakkr(server) => client
                            .as_ref()
                            .expect("HTTP client")
                            .post(server.url("/api/v1/jobs"))
                            .bearer_auth(&server.api_token)
                            .json(&serde_json::json!({"node": sim.id, "duration_s": 5}))
                            .send()
                            .map(|r| r.status().as_u16() == 201)
                            .unwrap_or(false),
                        Broker::Mosquitto { conn, .. } => {
                            let wake = Envelope::stamped(unix_ms(), JobCommand::Wake).encode();
                            let topic = format!("rakkr/v1/nodes/{}/cmd/jobs", sim.id);
                            conn.send(&publish_packet(&topic, &wake, 1, false, conn.pid()))
                                .is_ok()
                        }
                    };
                    let counter = if ok {
                        &fleet.c.created
                    } else {
                        &fleet.c.create_errors
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(window.saturating_sub(t0.elapsed()));
        // End of the window: telemetry, CPU, memory.
        let elapsed = t0.elapsed().as_secs_f64();
        let (in1, m1) = ingested(&broker)?;
        let sent1 = fleet.c.sent.load(Ordering::Relaxed);
        let (bcpu1, gcpu1, mach1) = (
            proc_ticks(&broker_pid.to_string())?,
            proc_ticks("self")?,
            machine_ticks()?,
        );
        r.rss_kib = proc_status_kib(broker_pid, "VmRSS:")?;
        r.hwm_kib = proc_status_kib(broker_pid, "VmHWM:")?;
        r.sent_per_s = (sent1 - sent0) as f64 / elapsed;
        r.ingested_per_s = (in1 - in0) / elapsed;
        r.broker_cpu = (bcpu1 - bcpu0) as f64 / clk / elapsed;
        r.gen_cpu = (gcpu1 - gcpu0) as f64 / clk / elapsed;
        r.machine_cpu = 2.0 * (mach1.0 - mach0.0) as f64 / (mach1.1 - mach0.1).max(1) as f64;
        r.max_lag_ms = fleet.c.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0;
        let delta = |k: &str| m1.get(k).unwrap_or(&0.0) - m0.get(k).unwrap_or(&0.0);
        if let Broker::Rakkr(_) = &broker {
            let mut extra = Vec::new();
            for k in [
                "rakkr_mqtt_refused_total",
                "rakkr_mqtt_bad_payloads_total",
                "rakkr_mqtt_job_reports_deferred_total",
                "rakkr_job_dropped_total",
                "rakkr_job_store_errors_total",
                "rakkr_store_errors_total",
                "rakkr_gate_protocol_errors_total",
                "rakkr_gate_refused_logins_total",
            ] {
                let d = delta(k);
                if d != 0.0 {
                    extra.push(format!("{k} +{d}"));
                }
            }
            if !extra.is_empty() {
                r.notes
                    .push_str(&format!(" window deltas: {}", extra.join(", ")));
            }
            r.notes.push_str(&format!(
                " claims/offers by server in window: {}/{}",
                delta("rakkr_job_claims_total"),
                delta("rakkr_job_offers_total")
            ));
        }
        Ok(())
    })?;
    // Offers still on their way.
    let _ = wait_for("outstanding offers", Duration::from_secs(10), || {
        (fleet.c.offers.load(Ordering::Relaxed) >= fleet.c.created.load(Ordering::Relaxed))
            .then_some(())
    });
    let mut claim: Vec<u64>;
    let mut e2e: Vec<u64>;
    {
        let lat = fleet.latencies.lock().unwrap_or_else(|e| e.into_inner());
        claim = lat.iter().map(|l| l.0).collect();
        e2e = lat.iter().map(|l| l.1).collect();
    }
    claim.sort_unstable();
    e2e.sort_unstable();
    r.created = fleet.c.created.load(Ordering::Relaxed);
    r.offers = claim.len() as u64;
    let ms = |us: u64| us as f64 / 1000.0;
    r.claim_p50_ms = ms(pct(&claim, 0.50));
    r.claim_p99_ms = ms(pct(&claim, 0.99));
    r.claim_max_ms = ms(claim.last().copied().unwrap_or(0));
    r.e2e_p50_ms = ms(pct(&e2e, 0.50));
    r.e2e_p99_ms = ms(pct(&e2e, 0.99));
    let c = &fleet.c;
    for (name, v) in [
        ("send errors", c.send_errors.load(Ordering::Relaxed)),
        ("disconnects", c.disconnects.load(Ordering::Relaxed)),
        ("suback failures", c.suback_failures.load(Ordering::Relaxed)),
        ("create errors", c.create_errors.load(Ordering::Relaxed)),
        ("pings", c.pings.load(Ordering::Relaxed)),
    ] {
        if v > 0 {
            r.notes.push_str(&format!(" {name} {v};"));
        }
    }
    r.notes.push_str(&format!(
        " wakes {} claims {} offers {};",
        c.wakes.load(Ordering::Relaxed),
        c.claims.load(Ordering::Relaxed),
        c.offers.load(Ordering::Relaxed)
    ));
    if let Broker::Mosquitto { counters, .. } = &broker {
        r.notes.push_str(&format!(
            " reference answered {} claims;",
            counters.offers_sent.load(Ordering::Relaxed)
        ));
    }

    // Tear down: stop the tickers, close every connection, wait for the readers.
    fleet.stop.store(true, Ordering::Relaxed);
    for t in tickers {
        let _ = t.join();
    }
    // Drops: everything sent since the window began against everything
    // ingested once the pipes have drained (frames in flight when the window
    // began count as ingested, so this errs towards fewer drops).
    std::thread::sleep(Duration::from_secs(2));
    let (in2, _) = ingested(&broker)?;
    let sent2 = fleet.c.sent.load(Ordering::Relaxed) - sent0;
    r.dropped = sent2 as i64 - (in2 - in0) as i64;
    r.drop_pct = 100.0 * r.dropped as f64 / sent2.max(1) as f64;
    for s in fleet.slots.iter().filter_map(|s| s.get()) {
        let _ = s.conn.stream.shutdown(Shutdown::Both);
    }
    if let Broker::Mosquitto { conn, .. } = &broker {
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
    let _ = wait_for("readers to end", Duration::from_secs(30), || {
        (fleet.c.readers_alive.load(Ordering::Relaxed) == 0).then_some(())
    });
    drop(broker);
    Ok(r)
}

fn print_header() {
    println!(
        "| target | run | nodes up | sent/s | ingested/s | dropped (%) | jobs | offers | claim p50 ms | claim p99 ms | claim max ms | create→offer p50/p99 ms | RSS MiB | peak MiB | broker CPU | gen CPU | machine CPU | gen lag ms |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
}

fn print_row(target: &str, run: &str, r: &RunResult) {
    println!(
        "| {target} | {run} | {} | {:.0} | {:.0} | {} ({:.2}) | {} | {} | {:.1} | {:.1} | {:.1} | {:.1}/{:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} |",
        r.connected,
        r.sent_per_s,
        r.ingested_per_s,
        r.dropped,
        r.drop_pct,
        r.created,
        r.offers,
        r.claim_p50_ms,
        r.claim_p99_ms,
        r.claim_max_ms,
        r.e2e_p50_ms,
        r.e2e_p99_ms,
        r.rss_kib as f64 / 1024.0,
        r.hwm_kib as f64 / 1024.0,
        r.broker_cpu,
        r.gen_cpu,
        r.machine_cpu,
        r.max_lag_ms,
    );
}

fn median_f(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_result(rs: &[RunResult]) -> RunResult {
    let m = |f: fn(&RunResult) -> f64| median_f(rs.iter().map(f));
    RunResult {
        connected: m(|r| r.connected as f64) as usize,
        enroll_s: m(|r| r.enroll_s),
        connect_s: m(|r| r.connect_s),
        sent_per_s: m(|r| r.sent_per_s),
        ingested_per_s: m(|r| r.ingested_per_s),
        drop_pct: m(|r| r.drop_pct),
        dropped: m(|r| r.dropped as f64) as i64,
        created: m(|r| r.created as f64) as u64,
        offers: m(|r| r.offers as f64) as u64,
        claim_p50_ms: m(|r| r.claim_p50_ms),
        claim_p99_ms: m(|r| r.claim_p99_ms),
        claim_max_ms: m(|r| r.claim_max_ms),
        e2e_p50_ms: m(|r| r.e2e_p50_ms),
        e2e_p99_ms: m(|r| r.e2e_p99_ms),
        rss_kib: m(|r| r.rss_kib as f64) as u64,
        hwm_kib: m(|r| r.hwm_kib as f64) as u64,
        broker_cpu: m(|r| r.broker_cpu),
        gen_cpu: m(|r| r.gen_cpu),
        machine_cpu: m(|r| r.machine_cpu),
        max_lag_ms: m(|r| r.max_lag_ms),
        notes: String::new(),
    }
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        nodes: 100,
        runs: 1,
        seconds: 25,
        warmup: 5,
        targets: vec![Target::Rakkr, Target::Mosquitto],
        claims_per_sec: 25.0,
        tickers: 0,
        connectors: 8,
        max_connections: None,
        mosquitto_nodelay: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => o.nodes = value()?.parse()?,
            "--runs" => o.runs = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--warmup" => o.warmup = value()?.parse()?,
            "--claims-per-sec" => o.claims_per_sec = value()?.parse()?,
            "--tickers" => o.tickers = value()?.parse()?,
            "--connectors" => o.connectors = value()?.parse()?,
            "--max-connections" => o.max_connections = Some(value()?.parse()?),
            "--mosquitto-nodelay" => o.mosquitto_nodelay = true,
            "--target" => {
                o.targets = match value()?.as_str() {
                    "rakkr" => vec![Target::Rakkr],
                    "rakkr-noauth" => vec![Target::RakkrNoauth],
                    "mosquitto" => vec![Target::Mosquitto],
                    "all" => vec![Target::Rakkr, Target::Mosquitto],
                    other => {
                        let mut v = Vec::new();
                        for t in other.split(',') {
                            v.push(match t {
                                "rakkr" => Target::Rakkr,
                                "rakkr-noauth" => Target::RakkrNoauth,
                                "mosquitto" => Target::Mosquitto,
                                _ => bail!("unknown target {t}"),
                            });
                        }
                        v
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "fleet-load --nodes N [--runs R] [--seconds S] [--warmup W] \
                     [--target rakkr|rakkr-noauth|mosquitto|all|a,b] [--claims-per-sec C] \
                     [--tickers T] [--connectors K] [--max-connections M] [--mosquitto-nodelay]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {flag} (try --help)"),
        }
    }
    if o.runs == 0 || o.nodes == 0 || o.seconds == 0 || o.claims_per_sec <= 0.0 {
        bail!("nodes, runs, seconds and claims-per-sec must be positive");
    }
    if o.tickers == 0 {
        o.tickers = o.nodes.div_ceil(2500).max(1);
    }
    Ok(o)
}

fn main() -> Result<()> {
    // reqwest has no TLS crypto provider of its own (enrollment and job requests).
    rakkr_mqtt::install_tls_provider();
    let o = parse_args()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "fleet-load: nodes={} runs={} window={} s warmup={} s claims/s={} tickers={} connectors={} \
         targets={:?} bin_dir={} cores={cores} generator max open files {}",
        o.nodes,
        o.runs,
        o.seconds,
        o.warmup,
        o.claims_per_sec,
        o.tickers,
        o.connectors,
        o.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        bin_dir().display(),
        max_open_files("self"),
    );
    if Path::new(&bin_dir()).join("rakkr-server").exists() {
        println!("  server binary: {}", bin("rakkr-server").display());
    }
    let mut results: Vec<(Target, Vec<RunResult>)> =
        o.targets.iter().map(|t| (*t, Vec::new())).collect();
    for run in 1..=o.runs {
        for (target, rs) in &mut results {
            let r = run_once(*target, &o, run)
                .with_context(|| format!("{} run {run}", target.name()))?;
            print_header();
            print_row(target.name(), &run.to_string(), &r);
            println!("  notes:{}", r.notes);
            rs.push(r);
        }
    }
    println!("\nper-run results and medians ({} nodes):", o.nodes);
    print_header();
    for (target, rs) in &results {
        for (i, r) in rs.iter().enumerate() {
            print_row(target.name(), &(i + 1).to_string(), r);
        }
    }
    let mut medians = Vec::new();
    for (target, rs) in &results {
        let m = median_result(rs);
        print_row(target.name(), "median", &m);
        medians.push((*target, m));
    }
    for (target, m) in &medians {
        if m.enroll_s > 0.0 {
            println!(
                "{}: median enrollment of {} nodes {:.1} s, connect to SUBACK {:.1} s",
                target.name(),
                o.nodes,
                m.enroll_s,
                m.connect_s
            );
        } else {
            println!(
                "{}: median connect to SUBACK {:.1} s",
                target.name(),
                m.connect_s
            );
        }
    }
    if let Some((_, mosq)) = medians.iter().find(|(t, _)| *t == Target::Mosquitto) {
        for (target, m) in medians.iter().filter(|(t, _)| *t != Target::Mosquitto) {
            println!(
                "{} / mosquitto: ingested/s {:.2}, RSS {:.2}, claim p99 {:.2}, broker CPU {:.2}",
                target.name(),
                m.ingested_per_s / mosq.ingested_per_s.max(1e-9),
                m.rss_kib as f64 / mosq.rss_kib.max(1) as f64,
                m.claim_p99_ms / mosq.claim_p99_ms.max(1e-9),
                m.broker_cpu / mosq.broker_cpu.max(1e-9),
            );
        }
    }
    Ok(())
}
