//! Recording what a run came to: its settlement on the process span and in the summary,
//! and its metrics (one run's measurements, the bound instruments of a delivery's
//! destination).

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use super::{Consumer, Settle, SettleError, Source, Summary};
use crate::messaging::attributes as attr;
use crate::metrics::{ConsumeBound, ConsumeCache, Metrics};
use crate::ProcessSpan;

/// One run's metrics: the delivery's bound instruments, when the run started, and the
/// `error.type` of its failure.
pub(super) struct Run<'a> {
    pub(super) bound: &'a ConsumeBound,
    pub(super) started: Instant,
    pub(super) error_type: Option<String>,
}

impl Run<'_> {
    /// A settlement that came to `settled` after `took`; `forwarded`: a broker action.
    pub(super) fn settled(
        &self,
        settled: &Result<&'static str, SettleError>,
        took: Duration,
        forwarded: bool,
    ) {
        match settled {
            Ok(label) => self.bound.settled(label, took, forwarded, None),
            Err(e) => self
                .bound
                .settled(e.settlement, took, forwarded, Some("settle_error")),
        }
    }

    pub(super) fn failed(self, error_type: String) -> Self {
        Run {
            error_type: Some(error_type),
            ..self
        }
    }
}

impl<S: Source> Consumer<S> {
    /// The bound instruments of `delivery`'s destination (or template).
    pub(super) fn bound(
        &self,
        metrics: &Arc<Metrics>,
        cache: &ConsumeCache,
        delivery: &S::Delivery<'_>,
    ) -> Arc<ConsumeBound> {
        let hooks = &self.telemetry.inner().hooks;
        let template = hooks
            .template
            .as_ref()
            .and_then(|t| t(delivery.system(), delivery.destination()));
        match template {
            None => cache.get(metrics, &delivery.metric_key(), || delivery.describe()),
            Some(template) => cache.get(metrics, &template, || {
                delivery.describe().destination_template(template.clone())
            }),
        }
    }
}

/// `tracehop.settlement` of a run whose failure the policy answered with a run in place
/// ([`Decision::Retry`]): nothing was settled.
pub(super) const RETRY_IN_PLACE: &str = "retry";

/// Record what settling came to on `span`: `tracehop.settlement`, and on failure
/// `tracehop.settlement.error`, a warning and a count. Returns the error if it is fatal.
pub(super) fn record_settlement(
    span: &ProcessSpan,
    settled: Result<&'static str, SettleError>,
    summary: &mut Summary,
    position: impl FnOnce() -> String,
) -> Option<SettleError> {
    match settled {
        Ok(label) => {
            span.set_attribute(attr::SETTLEMENT, label);
            None
        }
        Err(e) => {
            span.set_attributes([
                KeyValue::new(attr::SETTLEMENT, e.settlement),
                KeyValue::new(attr::SETTLEMENT_ERROR, e.error.to_string()),
            ]);
            tracing::warn!(error = %e, position = %position(), "settling a message failed");
            summary.settle_errors += 1;
            e.fatal.then_some(e)
        }
    }
}
