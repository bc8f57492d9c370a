//! The telemetry of a traced configuration, and the raw+headers baseline's headers.

use super::*;

/// The producer's and the consumer's telemetry for a traced mode, with their journal files.
pub(crate) struct Traced {
    pub(crate) producer: Telemetry,
    pub(crate) consumer: Telemetry,
    pub(crate) files: [PathBuf; 2],
}

impl Traced {
    /// The telemetry of a traced mode (`None` for the raw ones), its journals known to
    /// `probe`.
    pub(crate) fn for_mode(
        mode: Mode,
        prefix: &str,
        probe: &Probe,
    ) -> Result<Option<Traced>, Error> {
        if matches!(mode, Mode::Raw | Mode::RawHeaders) {
            return Ok(None);
        }
        let traced = Traced::new(mode, &unique(prefix))?;
        let _ = probe.journals.set(traced.files.to_vec());
        Ok(Some(traced))
    }

    pub(crate) fn new(mode: Mode, tag: &str) -> Result<Traced, Error> {
        let dir = std::env::temp_dir();
        let files = [
            dir.join(format!("{tag}-producer.jsonl")),
            dir.join(format!("{tag}-consumer.jsonl")),
        ];
        let build = |name: &str, file: &PathBuf| -> Result<Telemetry, Error> {
            let mut builder = Telemetry::builder(name).journal(Journal::file(file)?);
            if mode == Mode::Unsampled {
                builder = builder.sampler(Sampler::AlwaysOff);
            }
            // Messaging metrics on (an in-memory reader), to count what they cost.
            if std::env::var_os("TRACEHOP_BENCH_METRICS").is_some_and(|v| v == "1") {
                builder = builder.metrics(tracehop::testing::MetricsCapture::new().provider());
            }
            Ok(builder.build()?)
        };
        Ok(Traced {
            producer: build("bench-producer", &files[0])?,
            consumer: build("bench-consumer", &files[1])?,
            files,
        })
    }

    /// Shut down both services (writing every span), count the journal lines and bytes,
    /// remove the files.
    pub(crate) fn finish(self) -> Result<Journaled, Error> {
        let start = Instant::now();
        self.producer.shutdown()?;
        self.consumer.shutdown()?;
        let flush = start.elapsed();
        let mut lines = 0;
        let mut bytes = 0;
        for file in &self.files {
            bytes += std::fs::metadata(file).map_or(0, |m| m.len());
            // Streamed: a million-message journal does not fit comfortably in memory. Not
            // under `--once`, whose instructions are counted: reading the journal back is
            // the benchmark's work, not tracehop's.
            if COUNT_LINES.load(Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::File::open(file) {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut f, &mut buf) {
                        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
                    }
                }
            }
            let _ = std::fs::remove_file(file);
        }
        Ok((lines, bytes, flush))
    }
}

/// Whether [`Traced::finish`] counts the journal's lines (not under `--once`).
pub(crate) static COUNT_LINES: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// The `raw+headers` baseline: the client alone, carrying the two headers tracehop
/// writes for an unsampled message without baggage (a `traceparent` and the send time),
/// and the consumer looking up `traceparent`. What it costs over `raw` is what carrying
/// context costs this client and broker, before tracehop does anything.
pub(crate) mod context_headers {
    pub(crate) const TRACEPARENT: &str = "traceparent";
    pub(crate) const SENT_AT: &str = "tracehop-sent-at";
    pub(crate) const VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    /// The send time as tracehop writes it (Unix microseconds).
    pub(crate) fn sent_at() -> String {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
            .to_string()
    }
}

pub(crate) fn timeout_for(n: u64) -> Duration {
    Duration::from_secs(60 + n / 1000)
}
