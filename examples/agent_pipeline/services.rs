//! The services of the demo: what the agent runtime, the tool service and the LLM
//! provider do with a message, and how the gateway waits for a run's answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use serde_json::json;
use tokio::sync::oneshot;
use tracehop::Telemetry;

use crate::bus::{Error, Handler};
use crate::{Hop, Network, Role, ANSWER_TIMEOUT};

/// Runs waiting for an answer from another service, by run id.
#[derive(Clone, Default)]
pub struct Pending(Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>);

impl Pending {
    pub fn expect(&self, run: &str) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.to_owned(), tx);
        rx
    }

    pub fn answer(&self, run: &str, text: String) -> Result<(), Error> {
        let waiting = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
        match waiting {
            Some(tx) => tx
                .send(text)
                .map_err(|_| "nobody waits for this answer any more".into()),
            None => Err(format!("an answer for unknown run {run}").into()),
        }
    }

    pub async fn wait(rx: oneshot::Receiver<String>, what: &str) -> Result<String, Error> {
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(text)) => Ok(text),
            _ => Err(format!("no {what} within {ANSWER_TIMEOUT:?}").into()),
        }
    }
}

fn parse(body: &[u8]) -> Result<(String, String), Error> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    match (field("run"), field("text")) {
        (Some(run), Some(text)) => Ok((run, text)),
        _ => Err("message without run and text".into()),
    }
}

/// Everything one process runs: its services' consumers, and the gateway's runs.
pub struct Demo {
    pub net: Arc<Network>,
    pub telemetry: HashMap<Role, Telemetry>,
    pub tool_results: Pending,
    pub llm_responses: Pending,
    pub completed: Pending,
}

impl Demo {
    pub fn handler(&self, hop: Hop) -> Handler {
        let net = self.net.clone();
        let me = self.telemetry[&hop.consumer()].clone();
        let (tools, llm, done) = (
            self.tool_results.clone(),
            self.llm_responses.clone(),
            self.completed.clone(),
        );
        Arc::new(move |body: Vec<u8>| {
            let (net, me, tools, llm, done) = (
                net.clone(),
                me.clone(),
                tools.clone(),
                llm.clone(),
                done.clone(),
            );
            Box::pin(async move {
                let (run, text) = parse(&body)?;
                match hop {
                    Hop::Tasks => agent_runtime(&net, &me, &tools, &llm, run, text).await,
                    Hop::ToolCalls => tool_service(&net, &me, run, text).await,
                    Hop::LlmRequests => llm_provider(&net, &me, run, text).await,
                    Hop::ToolResults => tools.answer(&run, text),
                    Hop::LlmResponses => llm.answer(&run, text),
                    Hop::Completed => done.answer(&run, text),
                }
            })
        })
    }
}

async fn agent_runtime(
    net: &Network,
    me: &Telemetry,
    tools: &Pending,
    llm: &Pending,
    run: String,
    query: String,
) -> Result<(), Error> {
    // Plan: which tool to call.
    me.in_span("plan", tokio::time::sleep(Duration::from_millis(12)))
        .await;
    let answer = tools.expect(&run);
    let call = format!("search_invoices(vendor=*, period={:?})", month(&query));
    net.send(me, Hop::ToolCalls, json!({"run": run, "text": call}))
        .await?;
    let invoices = Pending::wait(answer, "tool result").await?;

    // Reason over the tool's result with the LLM.
    let summary = me
        .in_span_with(
            "reason",
            [KeyValue::new("gen_ai.operation.name", "chat")],
            async {
                tokio::time::sleep(Duration::from_millis(8)).await;
                let answer = llm.expect(&run);
                let prompt = format!("Summarise for the user: {invoices}");
                net.send(me, Hop::LlmRequests, json!({"run": run, "text": prompt}))
                    .await?;
                Pending::wait(answer, "LLM response").await
            },
        )
        .await?;
    net.send(me, Hop::Completed, json!({"run": run, "text": summary}))
        .await
}

fn month(query: &str) -> &str {
    query.split_whitespace().last().unwrap_or("March")
}

async fn tool_service(
    net: &Network,
    me: &Telemetry,
    run: String,
    call: String,
) -> Result<(), Error> {
    let result = me
        .in_span_with(
            "search_invoices",
            [KeyValue::new("tool.call", call)],
            async {
                tokio::time::sleep(Duration::from_millis(45)).await;
                "3 invoices: ACME-0311 $1,200; Globex-0317 $640; Initech-0329 $2,310".to_owned()
            },
        )
        .await;
    net.send(me, Hop::ToolResults, json!({"run": run, "text": result}))
        .await
}

async fn llm_provider(
    net: &Network,
    me: &Telemetry,
    run: String,
    prompt: String,
) -> Result<(), Error> {
    let completion = me
        .in_span_with(
            "complete",
            [KeyValue::new("gen_ai.request.model", "demo-llm")],
            async {
                tokio::time::sleep(Duration::from_millis(120)).await;
                format!(
                    "Found 3 vendor invoices for March totalling $4,150 ({} chars of context).",
                    prompt.len()
                )
            },
        )
        .await;
    net.send(
        me,
        Hop::LlmResponses,
        json!({"run": run, "text": completion}),
    )
    .await
}
