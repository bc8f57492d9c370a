//! NATS core: raw client, raw with the context headers, and the traced client.

use super::*;
use async_nats::Client;
use bytes::Bytes;
use tracehop::nats::TracedClient;

/// The NATS connections, shared by the core NATS and JetStream runs.
pub(crate) struct Env {
    pub(crate) publisher: Client,
    pub(crate) subscriber: Client,
}

pub(crate) async fn env() -> Result<Env, Error> {
    let url = env_or("TRACEHOP_NATS_URL", "nats://127.0.0.1:4222");
    Ok(Env {
        publisher: async_nats::connect(&url).await?,
        subscriber: async_nats::connect(&url).await?,
    })
}

pub(crate) async fn run(env: &Env, mode: Mode, probe: Arc<Probe>) -> Result<RunResult, Error> {
    let subject = async_nats::Subject::from(unique("tracehop.bench.core").as_str());
    let n = probe.n;
    let traced = Traced::for_mode(mode, "tracehop-bench-nats", &probe)?;
    let consumer = match &traced {
        None => {
            let mut sub = env.subscriber.subscribe(subject.clone()).await?;
            tracehop::nats::round_trip(&env.subscriber).await?;
            let probe = probe.clone();
            let headers = mode == Mode::RawHeaders;
            tokio::spawn(async move {
                let mut count = 0;
                while count <= n {
                    let Some(message) = sub.next().await else {
                        break;
                    };
                    if headers {
                        let h = message.headers.as_ref();
                        black_box(h.and_then(|h| h.get(context_headers::TRACEPARENT)));
                    }
                    probe.processed(&message.payload);
                    count += 1;
                }
            })
        }
        Some(t) => {
            let client = TracedClient::new(env.subscriber.clone(), t.consumer.clone());
            let mut sub = client.subscribe(subject.clone()).await?.limit(n + 1);
            tracehop::nats::round_trip(&env.subscriber).await?;
            let probe = probe.clone();
            tokio::spawn(async move {
                let _ = sub
                    .run(move |message| {
                        probe.processed(&message.payload);
                        ready(Ok::<(), Infallible>(()))
                    })
                    .await;
            })
        }
    };
    let producer = {
        let probe = probe.clone();
        let publisher = env.publisher.clone();
        let traced = traced
            .as_ref()
            .map(|t| TracedClient::new(env.publisher.clone(), t.producer.clone()));
        tokio::spawn(async move {
            let primer = Bytes::from_static(Probe::PRIMER);
            probe
                .prime(async {
                    match &traced {
                        None => publisher.publish(subject.clone(), primer).await?,
                        Some(t) => t.publish(subject.clone(), primer).await.map(|_| ())?,
                    }
                    Ok(publisher.flush().await?)
                })
                .await?;
            for _ in 0..n {
                let payload = Bytes::from(probe.next_payload().await);
                match &traced {
                    None if mode == Mode::RawHeaders => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(context_headers::TRACEPARENT, context_headers::VALUE);
                        headers.insert(context_headers::SENT_AT, context_headers::sent_at());
                        publisher
                            .publish_with_headers(subject.clone(), headers, payload)
                            .await?
                    }
                    None => publisher.publish(subject.clone(), payload).await?,
                    Some(t) => t.publish(subject.clone(), payload).await.map(|_| ())?,
                }
            }
            publisher.flush().await?;
            Ok::<(), Error>(())
        })
    };
    producer.await??;
    probe.finished(timeout_for(n)).await?;
    consumer.await?;
    let spans = traced.map(Traced::finish).transpose()?;
    Ok(probe.result(mode, spans))
}
