//! Measuring a run: the clock, a latency histogram, resident memory, and the probe that
//! paces the producer and times the consumer.

use super::*;

pub(crate) static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (a monotonic clock shared by producer and consumer).
pub(crate) fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Latencies in microseconds, in fixed buckets: exact below 1024 µs, then 128 buckets per
/// power of two (under 1% error). Recording is a relaxed atomic add; memory never grows.
pub(crate) struct Histogram {
    pub(crate) buckets: Box<[AtomicU64]>,
}

pub(crate) const SUB_BITS: u32 = 7;
pub(crate) const LINEAR: u64 = 1024;

impl Histogram {
    pub(crate) fn new() -> Histogram {
        let n = LINEAR as usize + (64 - 10) * (1 << SUB_BITS);
        Histogram {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn index(us: u64) -> usize {
        if us < LINEAR {
            return us as usize;
        }
        let e = 63 - us.leading_zeros();
        let m = (us >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + (e as usize - 10) * (1 << SUB_BITS) + m as usize
    }

    pub(crate) fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let k = i - LINEAR;
        let e = 10 + k / (1 << SUB_BITS);
        let m = k % (1 << SUB_BITS);
        (1 << e) + (m << (e - u64::from(SUB_BITS)))
    }

    pub(crate) fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile in microseconds (the lower edge of its bucket).
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::lower(i);
            }
        }
        0
    }
}

/// Resident memory of this process: (current `VmRSS`, peak `VmHWM`) in KiB.
pub(crate) fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What producer and consumer of one run share.
pub(crate) struct Probe {
    pub(crate) n: u64,
    pub(crate) payload: usize,
    pub(crate) window: Semaphore,
    pub(crate) primed: std::sync::atomic::AtomicBool,
    pub(crate) processed: AtomicU64,
    pub(crate) first_ns: AtomicU64,
    pub(crate) last_ns: AtomicU64,
    pub(crate) latency: Histogram,
    pub(crate) done: Notify,
    pub(crate) checkpoints: Vec<u64>,
    /// At each checkpoint: messages, VmRSS, VmHWM, journal bytes written so far.
    pub(crate) memory: Mutex<Vec<(u64, u64, u64, u64)>>,
    /// The journal files of a sampled run, to see how far the exporters are behind.
    pub(crate) journals: OnceLock<Vec<PathBuf>>,
}

impl Probe {
    pub(crate) fn new(n: u64, payload: usize, window: usize, checkpoints: Vec<u64>) -> Arc<Probe> {
        Arc::new(Probe {
            n,
            payload,
            window: Semaphore::new(window),
            primed: std::sync::atomic::AtomicBool::new(false),
            processed: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            latency: Histogram::new(),
            done: Notify::new(),
            checkpoints,
            memory: Mutex::new(Vec::new()),
            journals: OnceLock::new(),
        })
    }

    /// Wait for room in the window, then make the next payload, stamped with now.
    pub(crate) async fn next_payload(&self) -> Vec<u8> {
        if let Ok(permit) = self.window.acquire().await {
            permit.forget();
        }
        let now = now_ns();
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let mut payload = vec![b'x'; self.payload];
        payload[..8].copy_from_slice(&now.to_le_bytes());
        payload
    }

    /// The first message of a run: sent before timing starts, so that every connection,
    /// subscription and fetch is live when it does.
    pub(crate) const PRIMER: &'static [u8] = b"primer";

    /// Send the primer with `send` and wait until the consumer has seen it.
    pub(crate) async fn prime<F: std::future::Future<Output = Result<(), Error>>>(
        &self,
        send: F,
    ) -> Result<(), Error> {
        send.await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.primed.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                return Err("the primer message never arrived".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// The consumer saw `payload`.
    pub(crate) fn processed(&self, payload: &[u8]) {
        if payload == Self::PRIMER {
            self.primed.store(true, Ordering::Release);
            return;
        }
        let now = now_ns();
        if let Some(stamp) = payload.get(..8) {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(stamp);
            self.latency
                .record(now.saturating_sub(u64::from_le_bytes(sent)) / 1000);
        }
        self.window.add_permits(1);
        let count = self.processed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.checkpoints.contains(&count) {
            let (rss, hwm) = rss_kib();
            if let Ok(mut m) = self.memory.lock() {
                let journal = self.journals.get().map_or(0, |files| {
                    files
                        .iter()
                        .filter_map(|f| std::fs::metadata(f).ok())
                        .map(|m| m.len())
                        .sum()
                });
                m.push((count, rss, hwm, journal));
            }
        }
        if count == self.n {
            self.last_ns.store(now, Ordering::Relaxed);
            self.done.notify_one();
        }
    }

    /// Wait until every message was processed (or `timeout`).
    pub(crate) async fn finished(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            while self.processed.load(Ordering::Relaxed) < self.n {
                let notified = self.done.notified();
                if self.processed.load(Ordering::Relaxed) >= self.n {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            format!(
                "timed out: {} of {} messages processed",
                self.processed.load(Ordering::Relaxed),
                self.n
            )
        })?;
        Ok(())
    }

    pub(crate) fn result(&self, mode: Mode, spans: Option<Journaled>) -> RunResult {
        let first = self.first_ns.load(Ordering::Relaxed);
        let last = self.last_ns.load(Ordering::Relaxed);
        let secs = last.saturating_sub(first) as f64 / 1e9;
        RunResult {
            mode,
            rate: self.n as f64 / secs.max(1e-9),
            p50_us: self.latency.quantile(0.50),
            p99_us: self.latency.quantile(0.99),
            spans,
        }
    }
}

/// What the journals of a traced run held: lines, bytes, and how long the final flush
/// took.
pub(crate) type Journaled = (u64, u64, Duration);

#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    pub(crate) mode: Mode,
    /// Messages per second.
    pub(crate) rate: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// Sampled runs: journal lines written and how long the final flush took.
    pub(crate) spans: Option<Journaled>,
}
