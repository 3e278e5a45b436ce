//! What a self-service route does and what `[selfservice]` sets, as compiled: the routes and
//! `config` name these; the handlers live in `crate::selfservice`.

use http::Method;

/// What a self-service route does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `POST`: creates an account and returns its first key, once.
    Register,
    /// `GET`: the caller's profile; `PATCH`: changes its name or profile fields.
    Me,
    /// `POST`: replaces the presented key (no grace) and returns the new one, once.
    RegenerateKey,
    /// `POST`: a parent replaces every key of its child account named by path parameter `param`.
    RegenerateChildKey { param: Box<str> },
}

impl Action {
    /// The methods the action answers (a route naming none gets these).
    pub fn methods(&self) -> Vec<Method> {
        match self {
            Action::Me => vec![Method::GET, Method::PATCH],
            _ => vec![Method::POST],
        }
    }
}

/// `[selfservice]`: what registration creates and which profile fields callers keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfService {
    pub plan: String,
    pub scopes: Vec<keygate_core::Scope>,
    pub key_label: String,
    pub max_body_bytes: usize,
    pub name_max_length: usize,
    /// Profile fields besides `name`, with their longest value in characters.
    pub fields: std::collections::BTreeMap<String, usize>,
    /// What an update may change (`name` and fields).
    pub patchable: Vec<String>,
}

impl SelfService {
    pub const DEFAULT_MAX_BODY: usize = 4096;
    pub const DEFAULT_NAME_LENGTH: usize = 64;
}
