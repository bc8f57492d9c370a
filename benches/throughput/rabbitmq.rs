//! RabbitMQ: raw lapin, raw with headers, and the traced channel and consumer.

use super::*;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracehop::amqp::{TracedChannel, TracedConsumer};

pub(crate) struct Env {
    _publisher: Connection,
    publish: Channel,
    consume: Connection,
}

pub(crate) async fn env() -> Result<Env, Error> {
    let url = env_or("TRACEHOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let publisher = Connection::connect(&url, ConnectionProperties::default()).await?;
    let subscriber = Connection::connect(&url, ConnectionProperties::default()).await?;
    Ok(Env {
        publish: publisher.create_channel().await?,
        _publisher: publisher,
        consume: subscriber,
    })
}

pub(crate) async fn run(
    env: &Env,
    mode: Mode,
    probe: Arc<Probe>,
    window: usize,
) -> Result<RunResult, Error> {
    let queue = unique("tracehop-bench");
    let channel = env.consume.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(
            u16::try_from(window).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let n = probe.n;
    let traced = Traced::for_mode(mode, "tracehop-bench-amqp", &probe)?;
    let consume = match &traced {
        None => {
            let probe = probe.clone();
            let headers = mode == Mode::RawHeaders;
            tokio::spawn(async move {
                let mut consumer = consumer;
                let mut count = 0;
                while count <= n {
                    let Some(Ok(delivery)) = consumer.next().await else {
                        break;
                    };
                    if headers {
                        let h = delivery.properties.headers().as_ref();
                        black_box(h.and_then(|h| h.inner().get(context_headers::TRACEPARENT)));
                    }
                    probe.processed(&delivery.data);
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    count += 1;
                }
            })
        }
        Some(t) => {
            let mut consumer = TracedConsumer::new(consumer, t.consumer.clone()).limit(n + 1);
            let probe = probe.clone();
            tokio::spawn(async move {
                let _ = consumer
                    .run(move |delivery| {
                        probe.processed(&delivery.data);
                        ready(Ok::<(), Infallible>(()))
                    })
                    .await;
            })
        }
    };
    let producer = {
        let probe = probe.clone();
        let channel = env.publish.clone();
        let traced = traced
            .as_ref()
            .map(|t| TracedChannel::new(env.publish.clone(), t.producer.clone()));
        let queue = queue.clone();
        tokio::spawn(async move {
            let publish = |payload: Vec<u8>| {
                let (channel, traced, queue) = (&channel, &traced, &queue);
                async move {
                    let options = BasicPublishOptions::default();
                    let mut properties = BasicProperties::default();
                    if mode == Mode::RawHeaders {
                        let mut headers = FieldTable::default();
                        headers.insert(
                            context_headers::TRACEPARENT.into(),
                            AMQPValue::LongString(context_headers::VALUE.into()),
                        );
                        headers.insert(
                            context_headers::SENT_AT.into(),
                            AMQPValue::LongString(context_headers::sent_at().into()),
                        );
                        properties = properties.with_headers(headers);
                    }
                    match traced {
                        None => {
                            channel
                                .basic_publish(
                                    "".into(),
                                    queue.as_str().into(),
                                    options,
                                    &payload,
                                    properties,
                                )
                                .await?
                                .await?;
                        }
                        Some(t) => {
                            t.basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                options,
                                &payload,
                                properties,
                            )
                            .await?
                            .await?;
                        }
                    }
                    Ok::<(), Error>(())
                }
            };
            probe.prime(publish(Probe::PRIMER.to_vec())).await?;
            for _ in 0..n {
                publish(probe.next_payload().await).await?;
            }
            Ok::<(), Error>(())
        })
    };
    producer.await??;
    probe.finished(timeout_for(n)).await?;
    consume.await?;
    let spans = traced.map(Traced::finish).transpose()?;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "bench done".into()).await;
    Ok(probe.result(mode, spans))
}
