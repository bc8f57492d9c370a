//! JetStream: raw, raw with headers, and traced publish + pull consumer.

use super::*;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use tracehop::nats::TracedJetStream;

pub(crate) async fn run(
    env: &nats_core::Env,
    mode: Mode,
    probe: Arc<Probe>,
    window: usize,
) -> Result<RunResult, Error> {
    let name = unique("TRACEHOP_BENCH").replace('-', "_");
    let subject = format!("tracehop.bench.js.{name}");
    let publisher = jetstream::new(env.publisher.clone());
    let subscriber = jetstream::new(env.subscriber.clone());
    let stream = subscriber
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: i64::try_from(window)?.max(1000),
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    let n = probe.n;
    let traced = Traced::for_mode(mode, "tracehop-bench-js", &probe)?;
    let consumer = match &traced {
        None => {
            let probe = probe.clone();
            let headers = mode == Mode::RawHeaders;
            tokio::spawn(async move {
                let mut messages = messages;
                let mut count = 0;
                while count <= n {
                    let message = match messages.next().await {
                        Some(Ok(message)) => message,
                        // A missed heartbeat or the like: the stream goes on.
                        Some(Err(_)) => continue,
                        None => break,
                    };
                    if headers {
                        let h = message.headers.as_ref();
                        black_box(h.and_then(|h| h.get(context_headers::TRACEPARENT)));
                    }
                    probe.processed(&message.payload);
                    let _ = message.ack().await;
                    count += 1;
                }
            })
        }
        Some(t) => {
            let js = TracedJetStream::new(subscriber.clone(), t.consumer.clone());
            let probe = probe.clone();
            tokio::spawn(async move {
                let _ = js
                    .messages(messages)
                    .limit(n + 1)
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
        let traced = traced
            .as_ref()
            .map(|t| TracedJetStream::new(publisher.clone(), t.producer.clone()));
        tokio::spawn(async move {
            let publisher = &publisher;
            let traced = &traced;
            let subject = &subject;
            let primer = Bytes::from_static(Probe::PRIMER);
            probe
                .prime(async {
                    match traced {
                        None => {
                            publisher.publish(subject.clone(), primer).await?.await?;
                        }
                        Some(t) => {
                            t.publish(subject.clone(), primer).await?;
                        }
                    }
                    Ok(())
                })
                .await?;
            futures_util::stream::iter(0..n)
                .map(|_| {
                    let probe = probe.clone();
                    async move {
                        let payload = Bytes::from(probe.next_payload().await);
                        match traced {
                            None if mode == Mode::RawHeaders => {
                                let mut headers = async_nats::HeaderMap::new();
                                headers
                                    .insert(context_headers::TRACEPARENT, context_headers::VALUE);
                                headers
                                    .insert(context_headers::SENT_AT, context_headers::sent_at());
                                publisher
                                    .publish_with_headers(subject.clone(), headers, payload)
                                    .await?
                                    .await?;
                            }
                            None => {
                                publisher.publish(subject.clone(), payload).await?.await?;
                            }
                            Some(t) => {
                                t.publish(subject.clone(), payload).await?;
                            }
                        }
                        Ok::<(), Error>(())
                    }
                })
                .buffer_unordered(window)
                .try_for_each(|()| ready(Ok(())))
                .await
        })
    };
    producer.await??;
    probe.finished(timeout_for(n)).await?;
    consumer.await?;
    let spans = traced.map(Traced::finish).transpose()?;
    let _ = subscriber.delete_stream(&name).await;
    Ok(probe.result(mode, spans))
}
