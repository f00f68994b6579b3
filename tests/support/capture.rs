//! A tracing layer that keeps every event with its fields as text.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One event as it was emitted.
#[derive(Debug, Clone)]
pub struct Event {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Event {
    /// The value of field `name`, as text.
    pub fn field(&self, name: &str) -> Option<&str> {
        let found = self.fields.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    /// The message and every field, as one text to search.
    pub fn text(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        format!("{} {}", self.message, fields.join(" "))
    }
}

/// Keeps the events of the thread it is installed on.
#[derive(Clone, Default)]
pub struct Capture {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Capture {
    /// Collects this thread's events until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events lock").clone()
    }

    /// The events whose message contains `text`.
    pub fn with_message(&self, text: &str) -> Vec<Event> {
        let events = self.events();
        events
            .into_iter()
            .filter(|e| e.message.contains(text))
            .collect()
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let captured = Event {
            level: *event.metadata().level(),
            message: visitor.message,
            fields: visitor.fields,
        };
        self.events.lock().expect("events lock").push(captured);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.keep(field, format!("{value:?}"));
    }
}

impl Fields {
    fn keep(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => self.fields.push((name.to_owned(), value)),
        }
    }
}
