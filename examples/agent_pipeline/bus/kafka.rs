//! The demo's Kafka bus: rdkafka, over a real broker or the in-process MockCluster.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use tracehop::kafka::{TracedConsumer, TracedProducer};
use tracehop::Telemetry;

use super::{BoxFuture, Bus, Error, Handler};

pub struct KafkaBus {
    config: ClientConfig,
    producer: FutureProducer,
    /// Topics live in an in-process MockCluster (which `run` keeps alive).
    mock: bool,
}

impl KafkaBus {
    pub fn new(servers: &str, mock: bool) -> Result<KafkaBus, Error> {
        let mut config = ClientConfig::new();
        // Low-latency settings: a demo sends one message at a time.
        config
            .set("bootstrap.servers", servers)
            .set("linger.ms", "0")
            .set("fetch.wait.max.ms", "10");
        let producer: FutureProducer = config.create()?;
        Ok(KafkaBus {
            config,
            producer,
            mock,
        })
    }
}

impl Bus for KafkaBus {
    fn label(&self) -> String {
        if self.mock {
            "Kafka (in-process MockCluster)".into()
        } else {
            format!(
                "Kafka at {}",
                self.config.get("bootstrap.servers").unwrap_or("?")
            )
        }
    }

    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if self.mock {
                // `run` created them in the MockCluster.
                return Ok(());
            }
            let admin: AdminClient<DefaultClientContext> = self.config.create()?;
            let topics: Vec<NewTopic<'_>> = queues
                .iter()
                .map(|q| NewTopic::new(q, 1, TopicReplication::Fixed(1)))
                .collect();
            for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
                match result {
                    Ok(_) => {}
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(format!("create topic {topic}: {code}").into())
                    }
                }
            }
            Ok(())
        })
    }

    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let record = FutureRecord::<(), _>::to(queue).payload(&body);
            let timeout = Duration::from_secs(10);
            if traced {
                TracedProducer::new(self.producer.clone(), from.clone())
                    .send(record, timeout)
                    .await
                    .map_err(|(e, _)| e)?;
            } else {
                self.producer
                    .send(record, timeout)
                    .await
                    .map_err(|(e, _)| e)?;
            }
            Ok(())
        })
    }

    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>> {
        Box::pin(async move {
            let group = format!("{queue}-{}", service.service_name());
            let consumer: StreamConsumer = self
                .config
                .clone()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .create()?;
            // One partition per topic and one consumer per service: assign it directly
            // rather than waiting for a consumer-group rebalance.
            let mut partitions = rdkafka::TopicPartitionList::new();
            partitions.add_partition_offset(&queue, 0, rdkafka::Offset::Stored)?;
            consumer.assign(&partitions)?;
            let consumer = TracedConsumer::new(consumer, service).group_id(group);
            Ok(super::run(consumer, count, handler, |m| {
                m.payload().unwrap_or_default().to_vec()
            }))
        })
    }
}
