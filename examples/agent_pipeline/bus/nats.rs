//! The demo's NATS bus: core NATS queue subscriptions.

use tracehop::nats::TracedClient;
use tracehop::Telemetry;

use super::{BoxFuture, Bus, Error, Handler};

pub struct NatsBus {
    pub url: String,
    pub client: async_nats::Client,
}

impl Bus for NatsBus {
    fn label(&self) -> String {
        format!("NATS at {}", self.url)
    }

    fn prepare<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if traced {
                TracedClient::new(self.client.clone(), from.clone())
                    .publish(queue.to_owned(), body.into())
                    .await?;
            } else {
                self.client.publish(queue.to_owned(), body.into()).await?;
            }
            self.client.flush().await?;
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
            let group = service.service_name().to_owned();
            let subscriber = TracedClient::new(self.client.clone(), service)
                .queue_subscribe(queue, group)
                .await?;
            // The server must know the subscription before another service publishes.
            tracehop::nats::round_trip(&self.client).await?;
            Ok(super::run(subscriber, count, handler, |m| {
                m.payload.to_vec()
            }))
        })
    }
}
