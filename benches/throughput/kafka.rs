//! Kafka on tansu and on the in-process MockCluster: raw rdkafka, raw with headers, and the
//! traced producer and consumer.

use super::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracehop::kafka::{TracedConsumer, TracedProducer};

pub(crate) struct Env {
    bootstrap: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

pub(crate) fn env(broker: Broker) -> Result<Env, Error> {
    if broker == Broker::KafkaMock {
        let mock = MockCluster::new(1)?;
        return Ok(Env {
            bootstrap: mock.bootstrap_servers(),
            mock: Some(mock),
        });
    }
    Ok(Env {
        bootstrap: env_or("TRACEHOP_KAFKA_BROKERS", "127.0.0.1:9092"),
        mock: None,
    })
}

fn config(env: &Env) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.bootstrap)
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000")
        .set("fetch.wait.max.ms", "10");
    config
}

async fn topic(env: &Env) -> Result<String, Error> {
    let name = unique("tracehop-bench");
    match &env.mock {
        Some(mock) => mock.create_topic(&name, 1, 1)?,
        None => {
            let admin: AdminClient<DefaultClientContext> = config(env).create()?;
            let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            for result in admin.create_topics([&topic], &options).await? {
                result.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
            }
        }
    }
    Ok(name)
}

/// Delete a run's topic, unless `TRACEHOP_BENCH_KEEP_TOPICS` is set (see the module docs).
async fn delete(env: &Env, topic: &str) {
    if env.mock.is_none() && std::env::var_os("TRACEHOP_BENCH_KEEP_TOPICS").is_none() {
        if let Ok(admin) = config(env).create::<AdminClient<DefaultClientContext>>() {
            let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
        }
    }
}

pub(crate) async fn run(
    env: &Env,
    mode: Mode,
    probe: Arc<Probe>,
    window: usize,
) -> Result<RunResult, Error> {
    let topic = topic(env).await?;
    let n = probe.n;
    let traced = Traced::for_mode(mode, "tracehop-bench-kafka", &probe)?;
    let mut consumer_config = config(env);
    consumer_config
        .set("group.id", unique("tracehop-bench"))
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = consumer_config.create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let consume = match &traced {
        None => {
            let probe = probe.clone();
            let with_headers = mode == Mode::RawHeaders;
            tokio::spawn(async move {
                let mut count = 0;
                while count <= n {
                    match consumer.recv().await {
                        Ok(message) => {
                            if with_headers {
                                black_box(message.headers().and_then(|h| {
                                    h.iter().find(|h| h.key == context_headers::TRACEPARENT)
                                }));
                            }
                            probe.processed(message.payload().unwrap_or_default());
                            count += 1;
                        }
                        Err(e) => eprintln!("kafka consumer: {e}"),
                    }
                }
            })
        }
        Some(t) => {
            // Offsets are left to librdkafka's auto-commit, as in the raw loop.
            let mut consumer = TracedConsumer::new(consumer, t.consumer.clone())
                .commit(None)
                .limit(n + 1);
            let probe = probe.clone();
            tokio::spawn(async move {
                let _ = consumer
                    .run(move |message| {
                        probe.processed(message.payload().unwrap_or_default());
                        ready(Ok::<(), Infallible>(()))
                    })
                    .await;
            })
        }
    };
    let producer: FutureProducer = config(env).create()?;
    let producer_task = {
        let probe = probe.clone();
        let traced = traced
            .as_ref()
            .map(|t| TracedProducer::new(producer.clone(), t.producer.clone()));
        let topic = topic.clone();
        tokio::spawn(async move {
            let producer = &producer;
            let traced = &traced;
            let topic = topic.as_str();
            probe
                .prime(async {
                    let record = FutureRecord::<(), [u8]>::to(topic).payload(Probe::PRIMER);
                    let sent = match traced {
                        None => producer.send(record, Timeout::Never).await.map(|_| ()),
                        Some(t) => t.send(record, Timeout::Never).await.map(|_| ()),
                    };
                    sent.map(|_| ()).map_err(|(e, _)| Error::from(e))
                })
                .await?;
            futures_util::stream::iter(0..n)
                .map(|_| {
                    let probe = probe.clone();
                    async move {
                        let payload = probe.next_payload().await;
                        let mut record = FutureRecord::<(), [u8]>::to(topic).payload(&payload[..]);
                        if mode == Mode::RawHeaders {
                            record = record.headers(
                                OwnedHeaders::new_with_capacity(2)
                                    .insert(Header {
                                        key: context_headers::TRACEPARENT,
                                        value: Some(context_headers::VALUE),
                                    })
                                    .insert(Header {
                                        key: context_headers::SENT_AT,
                                        value: Some(&context_headers::sent_at()),
                                    }),
                            );
                        }
                        let sent = match traced {
                            None => producer.send(record, Timeout::Never).await.map(|_| ()),
                            Some(t) => t.send(record, Timeout::Never).await.map(|_| ()),
                        };
                        sent.map(|_| ()).map_err(|(e, _)| Error::from(e))
                    }
                })
                .buffer_unordered(window)
                .try_for_each(|()| ready(Ok(())))
                .await
        })
    };
    producer_task.await??;
    probe.finished(timeout_for(n)).await?;
    consume.await?;
    let spans = traced.map(Traced::finish).transpose()?;
    delete(env, &topic).await;
    Ok(probe.result(mode, spans))
}
