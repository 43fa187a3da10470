//! The SCIM event URIs (RFC 9967 §2.3, §2.4) a receiver may ask for, as types.

use std::fmt;

pub const PREFIX: &str = "urn:ietf:params:scim:event:";

/// What happened to a resource, or to its place in a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Create,
    Patch,
    Put,
    Delete,
    Activate,
    Deactivate,
    FeedAdd,
    FeedRemove,
}

/// `notice` lists the attributes that changed; `full` carries the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Form {
    Notice,
    Full,
}

/// One event URI, e.g. `urn:ietf:params:scim:event:prov:create:full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventUri {
    pub kind: EventKind,
    /// Only create, patch and put come in two forms.
    pub form: Option<Form>,
}

impl EventKind {
    fn path(self) -> &'static str {
        match self {
            EventKind::Create => "prov:create",
            EventKind::Patch => "prov:patch",
            EventKind::Put => "prov:put",
            EventKind::Delete => "prov:delete",
            EventKind::Activate => "prov:activate",
            EventKind::Deactivate => "prov:deactivate",
            EventKind::FeedAdd => "feed:add",
            EventKind::FeedRemove => "feed:remove",
        }
    }

    fn has_forms(self) -> bool {
        matches!(self, EventKind::Create | EventKind::Patch | EventKind::Put)
    }

    const ALL: [EventKind; 8] = [
        EventKind::Create,
        EventKind::Patch,
        EventKind::Put,
        EventKind::Delete,
        EventKind::Activate,
        EventKind::Deactivate,
        EventKind::FeedAdd,
        EventKind::FeedRemove,
    ];
}

impl EventUri {
    pub fn new(kind: EventKind, form: Option<Form>) -> EventUri {
        EventUri { kind, form }
    }

    /// Every URI the service can issue, as `/ServiceProviderConfig` lists them.
    pub fn all() -> Vec<EventUri> {
        let mut out = Vec::new();
        for k in EventKind::ALL {
            if k.has_forms() {
                out.push(EventUri::new(k, Some(Form::Notice)));
                out.push(EventUri::new(k, Some(Form::Full)));
            } else {
                out.push(EventUri::new(k, None));
            }
        }
        out
    }
}

impl fmt::Display for EventUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.kind.path())?;
        match self.form {
            Some(Form::Notice) => f.write_str(":notice"),
            Some(Form::Full) => f.write_str(":full"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event URI {0:?}: expected one of the SCIM event URIs of RFC 9967 (e.g. urn:ietf:params:scim:event:prov:create:full)")]
pub struct UnknownUri(pub String);

impl std::str::FromStr for EventUri {
    type Err = UnknownUri;

    /// Takes the full URI or its short form (`prov:create:full`); the prefix is
    /// case-insensitive, as some drafts and clients write `SCIM`.
    fn from_str(s: &str) -> Result<EventUri, UnknownUri> {
        let t = s.trim();
        let short = if t.len() >= PREFIX.len() && t[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            &t[PREFIX.len()..]
        } else {
            t
        };
        EventUri::all()
            .into_iter()
            .find(|u| u.to_string()[PREFIX.len()..] == *short)
            .ok_or_else(|| UnknownUri(s.chars().take(200).collect()))
    }
}

/// The URIs one receiver wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants(Vec<EventUri>);

impl Wants {
    pub fn new(mut uris: Vec<EventUri>) -> Wants {
        uris.sort();
        uris.dedup();
        Wants(uris)
    }

    pub fn parse<S: AsRef<str>>(uris: &[S]) -> Result<Wants, UnknownUri> {
        let parsed = uris
            .iter()
            .map(|u| u.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Wants::new(parsed))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn uris(&self) -> &[EventUri] {
        &self.0
    }

    /// The forms of `kind` wanted (both when both are).
    pub fn forms(&self, kind: EventKind) -> Vec<Option<Form>> {
        self.0
            .iter()
            .filter(|u| u.kind == kind)
            .map(|u| u.form)
            .collect()
    }

    pub fn strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_read_back_as_they_print_and_short_forms_are_taken() {
        for u in EventUri::all() {
            assert_eq!(u.to_string().parse::<EventUri>().unwrap(), u);
        }
        let u: EventUri = "prov:create:full".parse().unwrap();
        assert_eq!(u, EventUri::new(EventKind::Create, Some(Form::Full)));
        let u: EventUri = "urn:ietf:params:SCIM:event:prov:delete".parse().unwrap();
        assert_eq!(u.kind, EventKind::Delete);
        assert!("prov:delete:full".parse::<EventUri>().is_err());
        assert!("prov:create".parse::<EventUri>().is_err());
        assert_eq!(EventUri::all().len(), 11);
    }
}
