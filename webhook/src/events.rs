//! Kubernetes Events for pods tollgate denied (or, in warn mode, let through unhardened): on the pod's owner
//! where there is one (the Job, ReplicaSet, ... whose controller created it), so that whoever looks at
//! `kubectl describe job` sees why its pods never appear; a controller's warnings are read by nobody.
//!
//! Off the admission path: a review only offers a [`Note`] to a bounded queue ([`EventSink::offer`]) and never
//! waits; a background task writes the Events. The same note for the same object is written once per
//! [`REPEAT_AFTER`] (a controller retries a denied pod every few seconds), and a full queue drops notes, each
//! counted in `tollgate_webhook_events_total{result}`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

/// What a Note is about: the pod's controller, or the pod itself (which was never stored).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regarding {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Empty for a pod that was not stored.
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Note {
    pub namespace: String,
    pub regarding: Regarding,
    /// `Denied` or `Warned`.
    pub reason: &'static str,
    /// The denial, as the pod's creator saw it (at most [`MAX_NOTE`] bytes: the API's limit).
    pub note: String,
}

/// The Events API refuses a longer note.
pub const MAX_NOTE: usize = 1024;
/// A note already written for an object is written again only after this long.
pub const REPEAT_AFTER: Duration = Duration::from_secs(300);
const QUEUE: usize = 256;
/// At most this many notes are remembered for [`REPEAT_AFTER`]; beyond, repeats are written again.
const REMEMBERED: usize = 4096;

impl Note {
    pub fn new(namespace: &str, regarding: Regarding, reason: &'static str, message: &str) -> Note {
        let mut note = message.to_owned();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        Note { namespace: namespace.to_owned(), regarding, reason, note }
    }

    fn event(&self, instance: &str) -> Event {
        let r = &self.regarding;
        // As client-go names Events: the object's name and the time (generateName would end in a dot, which the
        // Events API refuses).
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        // A pod that had only a generateName is `prefix*`: what is not a name's is left out.
        let base: String =
            r.name.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).take(200).collect();
        let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let base = if base.is_empty() { "pod" } else { base };
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{nanos:x}")),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            action: Some("Admit".to_owned()),
            reason: Some(self.reason.to_owned()),
            note: Some(self.note.clone()),
            type_: Some("Warning".to_owned()),
            reporting_controller: Some("tollgate.dev/webhook".to_owned()),
            reporting_instance: Some(instance.to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some(r.api_version.clone()),
                kind: Some(r.kind.clone()),
                name: Some(r.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: (!r.uid.is_empty()).then(|| r.uid.clone()),
                ..ObjectReference::default()
            }),
            ..Event::default()
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `tollgate_webhook_events_total`, shared with the task that writes Events.
#[derive(Clone)]
pub struct EventCounter(Family<ResultLabels, Counter>);

impl EventCounter {
    /// Registered in `registry` (whether or not Events are written, so the series exists from the start).
    pub fn register(registry: &mut Registry) -> EventCounter {
        let events = Family::<ResultLabels, Counter>::default();
        registry.register("events", "Events about denied and warned pods (serve --events), by result", events.clone());
        EventCounter(events)
    }

    /// An Event `written`, `repeated` (not written again), `failed` or `dropped` (queue full).
    pub fn observe(&self, result: &'static str) {
        self.0.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Where reviews offer their notes.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<Note>,
    counter: EventCounter,
}

impl EventSink {
    /// Start writing Events with `client` as `instance` (the webhook pod's name).
    pub fn spawn(client: kube::Client, instance: String, counter: EventCounter) -> EventSink {
        let (queue, mut notes) = mpsc::channel::<Note>(QUEUE);
        let task_counter = counter.clone();
        tokio::spawn(async move {
            let counter = task_counter;
            let mut written: HashMap<Note, Instant> = HashMap::new();
            while let Some(note) = notes.recv().await {
                let now = Instant::now();
                written.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
                if written.contains_key(&note) {
                    counter.observe("repeated");
                    continue;
                }
                let api: Api<Event> = Api::namespaced(client.clone(), &note.namespace);
                match api.create(&PostParams::default(), &note.event(&instance)).await {
                    Ok(_) => {
                        counter.observe("written");
                        if written.len() < REMEMBERED {
                            written.insert(note, now);
                        }
                    }
                    Err(error) => {
                        counter.observe("failed");
                        tracing::warn!(%error, namespace = %note.namespace, regarding = %note.regarding.name, "writing an Event failed");
                    }
                }
            }
        });
        EventSink { queue, counter }
    }

    /// Queue `note`; never waits. A full queue drops it (counted).
    pub fn offer(&self, note: Note) {
        if self.queue.try_send(note).is_err() {
            self.counter.observe("dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_at_the_apis_limit_on_a_character_boundary() {
        let regarding = Regarding { api_version: "batch/v1".into(), kind: "Job".into(), name: "j".into(), uid: "u".into() };
        let long = "é".repeat(MAX_NOTE);
        let note = Note::new("ns", regarding.clone(), "Denied", &long);
        assert!(note.note.len() <= MAX_NOTE && note.note.ends_with("..."), "{}", note.note.len());
        let short = Note::new("ns", regarding, "Denied", "tollgate denied this pod");
        assert_eq!(short.note, "tollgate denied this pod");
        let event = short.event("tollgate-webhook-1");
        assert_eq!(event.regarding.as_ref().unwrap().kind.as_deref(), Some("Job"));
        assert_eq!(event.reporting_controller.as_deref(), Some("tollgate.dev/webhook"));
        assert!(event.metadata.name.as_deref().unwrap().starts_with("j."), "{:?}", event.metadata.name);
        // A pod known only by its generateName.
        let pod = Regarding { api_version: "v1".into(), kind: "Pod".into(), name: "Analysis-*".into(), uid: String::new() };
        let event = Note::new("ns", pod, "Denied", "x").event("i");
        assert!(event.metadata.name.as_deref().unwrap().starts_with("analysis."), "{:?}", event.metadata.name);
        assert_eq!(event.regarding.unwrap().uid, None);
    }
}
