//! Metrics as CloudWatch Embedded Metric Format: a `metrics` recorder that keeps what one Lambda
//! invocation recorded and writes it as EMF JSON lines when the adapter flushes after the
//! invocation. CloudWatch turns those log lines into metrics without any API call.
//!
//! One document per label set: the labels (plus `function`) are its dimensions, with roll-ups by
//! `function` and by `function` and `status`. Counters are
//! written as the delta since the last flush, gauges as their value, histograms as the values
//! recorded (at most 100 per document, as EMF allows; more are split across documents).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use lmaas_core::metrics::ALL;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "lmaas";

/// A label set (sorted key/value pairs) and the metrics recorded under it.
type Groups = BTreeMap<Vec<(String, String)>, Vec<(String, Value)>>;
const MAX_VALUES: usize = 100;

pub struct EmfRecorder {
    registry: Registry<Key, AtomicStorage>,
    function: String,
}

impl EmfRecorder {
    pub fn new(function: impl Into<String>) -> Self {
        EmfRecorder { registry: Registry::atomic(), function: function.into() }
    }

    /// Writes everything recorded since the last flush, one EMF document per line.
    pub fn flush(&self, mut out: impl Write) -> std::io::Result<()> {
        let mut groups = Groups::new();
        let labels = |key: &Key| key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
        self.registry.visit_counters(|key, counter| {
            let delta = counter.swap(0, Ordering::Relaxed);
            if delta > 0 {
                groups.entry(labels(key)).or_default().push((key.name().to_string(), json!(delta)));
            }
        });
        self.registry.visit_gauges(|key, gauge| {
            let value = f64::from_bits(gauge.load(Ordering::Relaxed));
            groups.entry(labels(key)).or_default().push((key.name().to_string(), json!(value)));
        });
        self.registry.visit_histograms(|key, histogram| {
            let mut values = Vec::new();
            histogram.clear_with(|batch| values.extend_from_slice(batch));
            for part in values.chunks(MAX_VALUES) {
                groups.entry(labels(key)).or_default().push((key.name().to_string(), json!(part)));
            }
        });
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        for (labels, metrics) in groups {
            // A name may appear once per document: split repeats (long histograms) into more.
            let mut documents: Vec<Vec<(String, Value)>> = Vec::new();
            for (name, value) in metrics {
                match documents.iter_mut().find(|d| d.iter().all(|(n, _)| *n != name)) {
                    Some(document) => document.push((name, value)),
                    None => documents.push(vec![(name, value)]),
                }
            }
            for metrics in documents {
                let document = self.document(timestamp, &labels, &metrics);
                serde_json::to_writer(&mut out, &document)?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()
    }

    fn document(&self, timestamp: u64, labels: &[(String, String)], metrics: &[(String, Value)]) -> Value {
        let mut dimensions = vec![Value::from("function")];
        let mut root = Map::new();
        root.insert("function".into(), Value::from(self.function.clone()));
        for (key, value) in labels {
            dimensions.push(Value::from(key.clone()));
            root.insert(key.clone(), Value::from(value.clone()));
        }
        // Roll-ups that alarms and dashboards can name without knowing every label value: by
        // function, and by function and status.
        let mut sets = vec![Value::from(dimensions.clone())];
        if dimensions.len() > 1 {
            sets.push(json!(["function"]));
        }
        if dimensions.len() > 2 && labels.iter().any(|(k, _)| k == "status") {
            sets.push(json!(["function", "status"]));
        }
        let definitions: Vec<Value> = metrics
            .iter()
            .map(|(name, _)| match ALL.iter().find(|m| m.name == name) {
                Some(def) => json!({ "Name": name, "Unit": def.unit.cloudwatch() }),
                None => json!({ "Name": name }),
            })
            .collect();
        for (name, value) in metrics {
            root.insert(name.clone(), value.clone());
        }
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{ "Namespace": NAMESPACE, "Dimensions": sets, "Metrics": definitions }]
            }),
        );
        Value::Object(root)
    }
}

impl Recorder for EmfRecorder {
    // Units and help come from the vocabulary table (`lmaas_core::metrics::ALL`).
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry.get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry.get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry.get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_writes_one_emf_document_per_label_set_and_resets_counters() {
        let recorder = EmfRecorder::new("infer");
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(lmaas_core::metrics::COLD_STARTS).increment(1);
            let labels = [("route", "infer"), ("status", "200")];
            metrics::histogram!(lmaas_core::metrics::REQUEST_DURATION, &labels).record(0.25);
            metrics::histogram!(lmaas_core::metrics::REQUEST_DURATION, &labels).record(0.5);
        });
        let mut out = Vec::new();
        recorder.flush(&mut out).unwrap();
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let request = lines.iter().find(|d| d["route"] == "infer").unwrap();
        assert_eq!(request[lmaas_core::metrics::REQUEST_DURATION], json!([0.25, 0.5]));
        let aws = &request["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(aws["Dimensions"], json!([["function", "route", "status"], ["function"], ["function", "status"]]));
        assert_eq!(aws["Metrics"], json!([{"Name": "lmaas_request_duration_seconds", "Unit": "Seconds"}]));
        assert_eq!((request["function"].as_str(), request["status"].as_str()), (Some("infer"), Some("200")));

        let mut again = Vec::new();
        recorder.flush(&mut again).unwrap();
        assert!(again.is_empty(), "nothing new since the last flush: {}", String::from_utf8_lossy(&again));
    }

    #[test]
    fn long_histograms_split_into_documents_of_at_most_100_values() {
        let recorder = EmfRecorder::new("worker");
        metrics::with_local_recorder(&recorder, || {
            for i in 0..250 {
                metrics::histogram!(lmaas_core::metrics::CHUNK_DURATION).record(f64::from(i));
            }
        });
        let mut out = Vec::new();
        recorder.flush(&mut out).unwrap();
        let sizes: Vec<usize> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()[lmaas_core::metrics::CHUNK_DURATION].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
