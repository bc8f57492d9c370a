//! Linked continuations: a trace one of whose consumer spans links to a send span of
//! another trace in the input continues that trace's run (as OpenTelemetry's messaging
//! instrumentations do when they start a trace per message and link the producer).

use super::node::{Node, Trace};
use super::store::NONE;
use super::tree::Traces;

/// Which traces continue which, and the runs they make together
/// ([`Traces::continuations`]).
#[derive(Debug, Clone)]
pub struct Continuations<'a> {
    traces: &'a Traces,
    /// Per trace: the first (consumer, send) pair, as global span indexes.
    first: Vec<(u32, u32)>,
    /// Per trace: the first trace of its run.
    run: Vec<u32>,
}

impl Traces {
    /// Find every linked continuation and group the traces into runs.
    pub fn continuations(&self) -> Continuations<'_> {
        let n = self.len();
        let mut first = vec![(NONE, NONE); n];
        let mut up: Vec<u32> = (0..n as u32).collect();
        fn root(up: &mut [u32], mut i: u32) -> u32 {
            while up[i as usize] != i {
                up[i as usize] = up[up[i as usize] as usize];
                i = up[i as usize];
            }
            i
        }
        for trace in self.iter() {
            for consumer in trace.by_start().filter(Node::is_consumer) {
                for send in consumer.links().filter_map(|l| l.target()) {
                    let other = send.trace().index();
                    if !send.is_send() || other == trace.index() {
                        continue;
                    }
                    if first[trace.index()].0 == NONE {
                        first[trace.index()] = (consumer.global() as u32, send.global() as u32);
                    }
                    let (a, b) = (
                        root(&mut up, trace.index() as u32),
                        root(&mut up, other as u32),
                    );
                    // The earlier trace (in trace order) names the run.
                    let (low, high) = (a.min(b), a.max(b));
                    up[high as usize] = low;
                }
            }
        }
        let run = (0..n as u32).map(|i| root(&mut up, i)).collect();
        Continuations {
            traces: self,
            first,
            run,
        }
    }
}

impl<'a> Continuations<'a> {
    /// For trace `index`: a consumer span in it and the send span (in another trace) it
    /// links to, when the trace is a linked continuation.
    pub fn continues(&self, index: usize) -> Option<(Node<'a>, Node<'a>)> {
        let (consumer, send) = *self.first.get(index)?;
        (consumer != NONE).then(|| {
            (
                self.traces.node_at(consumer as usize),
                self.traces.node_at(send as usize),
            )
        })
    }

    /// The traces that make one run: each trace with every trace it continues or that
    /// continues it, in trace order; runs ordered by their first trace.
    pub fn runs(&self) -> Vec<Vec<Trace<'a>>> {
        let mut runs: Vec<Vec<Trace<'a>>> = Vec::new();
        let mut slot = vec![NONE; self.run.len()];
        for (i, &r) in self.run.iter().enumerate() {
            if slot[r as usize] == NONE {
                slot[r as usize] = runs.len() as u32;
                runs.push(Vec::new());
            }
            runs[slot[r as usize] as usize].push(self.traces.trace(i));
        }
        runs
    }
}
