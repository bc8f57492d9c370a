//! The demo's RabbitMQ bus: the default exchange, one queue per hop.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tracehop::amqp::{TracedChannel, TracedConsumer};
use tracehop::Telemetry;

use super::{BoxFuture, Bus, Error, Handler};

pub struct AmqpBus {
    url: String,
    connection: Connection,
    channel: lapin::Channel,
}

impl AmqpBus {
    pub async fn connect(url: &str) -> Result<AmqpBus, Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(AmqpBus {
            url: url.to_owned(),
            connection,
            channel,
        })
    }
}

impl Bus for AmqpBus {
    fn label(&self) -> String {
        format!("RabbitMQ at {}", self.url)
    }

    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut args = FieldTable::default();
            // Leftover demo queues disappear ten minutes after their last use.
            args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
            for q in queues {
                self.channel
                    .queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions::default(),
                        args.clone(),
                    )
                    .await?;
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
            let options = BasicPublishOptions::default();
            let props = BasicProperties::default();
            if traced {
                TracedChannel::new(self.channel.clone(), from.clone())
                    .basic_publish("".into(), queue.into(), options, &body, props)
                    .await?
                    .await?;
            } else {
                self.channel
                    .basic_publish("".into(), queue.into(), options, &body, props)
                    .await?
                    .await?;
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
            // The consumer's channel lives as long as the consumer (lapin keeps it open).
            let channel = self.connection.create_channel().await?;
            channel.basic_qos(1, BasicQosOptions::default()).await?;
            let tag = format!("{}-{queue}", service.service_name());
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = TracedConsumer::new(consumer, service);
            Ok(super::run(consumer, count, handler, |d| d.data.clone()))
        })
    }
}
