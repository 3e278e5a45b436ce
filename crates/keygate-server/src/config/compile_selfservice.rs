//! `[selfservice]` and the routes that name a self-service action, checked with their lines.

use std::collections::BTreeMap;
use std::ops::Range;

use super::spanned::Spanned;
use keygate_core::Scope;

use super::choice::{Choice, SelfServiceWord, Spelled};
use super::errors::Errors;
use super::raw::{RawRoute, RawSelfService};
use super::Plan;
use crate::policy::selfservice::{Action, SelfService};

/// Field names the answers already use for the account itself.
const RESERVED: &[&str] = &[
    "id",
    "name",
    "plan",
    "scopes",
    "parent",
    "key_id",
    "api_key",
    "created_at",
];

/// Compiles `[selfservice]`; `None` when the table is absent (self-service off).
pub(super) fn compile(
    raw: Option<&Spanned<RawSelfService>>,
    plans: &BTreeMap<String, Plan>,
    errors: &mut Errors<'_>,
) -> Option<SelfService> {
    let spanned = raw?;
    let span = spanned.span();
    let r = spanned.get_ref();
    let max_body_bytes = errors
        .positive(
            Some(&span),
            "selfservice.max_body_bytes",
            r.max_body_bytes,
            None,
        )
        .map_or(SelfService::DEFAULT_MAX_BODY, |n| {
            usize::try_from(n.get()).unwrap_or(usize::MAX)
        });
    let mut err = |m: String| errors.at(Some(&span), format!("selfservice: {m}"));
    if !plans.contains_key(&r.plan) {
        err(format!(
            "plan `{}` is not configured (add [plans.{}])",
            r.plan, r.plan
        ));
    }
    let mut scopes = Vec::new();
    for s in &r.scopes {
        match Scope::new(s) {
            Ok(s) => scopes.push(s),
            Err(e) => err(format!("scopes: {e}")),
        }
    }
    let key_label = r
        .key_label
        .clone()
        .unwrap_or_else(|| "self-service".to_owned());
    if let Err(e) = keygate_core::names::check_label(&key_label) {
        err(format!("key_label: {e}"));
    }
    let name_max_length = match r.name_max_length {
        None => SelfService::DEFAULT_NAME_LENGTH,
        Some(n @ 1..=100) => n,
        Some(n) => {
            err(format!(
                "name_max_length: {n} is not between 1 and 100 characters"
            ));
            SelfService::DEFAULT_NAME_LENGTH
        }
    };
    let mut fields = BTreeMap::new();
    for (field, &max) in &r.fields {
        let well_formed = !field.is_empty()
            && field.len() <= 64
            && field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            err(format!(
                "fields: `{field}` is not a field name (lowercase letters, digits and `_`)"
            ));
        } else if RESERVED.contains(&field.as_str()) {
            err(format!(
                "fields: `{field}` is reserved for the account itself ({})",
                RESERVED.join(", ")
            ));
        }
        match usize::try_from(max) {
            Ok(n @ 1..=4096) => {
                fields.insert(field.clone(), n);
            }
            _ => err(format!(
                "fields.{field}: {max} is not a length between 1 and 4096 characters"
            )),
        }
    }
    let patchable = match &r.patchable {
        None => std::iter::once("name".to_owned())
            .chain(fields.keys().cloned())
            .collect(),
        Some(list) => {
            for p in list {
                if p != "name" && !fields.contains_key(p) {
                    err(format!(
                        "patchable: `{p}` is neither `name` nor one of fields"
                    ));
                }
            }
            list.clone()
        }
    };
    Some(SelfService {
        plan: r.plan.clone(),
        scopes,
        key_label,
        max_body_bytes,
        name_max_length,
        fields,
        patchable,
    })
}

/// The self-service action of a route, checked against its other keys.
pub(super) fn route_action(
    r: &RawRoute,
    name: &str,
    span: Option<&Range<usize>>,
    selfservice: Option<&SelfService>,
    errors: &mut Errors<'_>,
) -> Option<Action> {
    let Some(raw_action) = &r.selfservice else {
        if r.child_param.is_some() {
            errors.at(
                span,
                format!("route `{name}`: child_param is only for selfservice = \"regenerate_child_key\""),
            );
        }
        return None;
    };
    let which = Choice::read(
        Some(raw_action),
        &format!("route `{name}`: selfservice"),
        span,
        errors,
    )?;
    let mut err = |m: String| errors.at(span, format!("route `{name}`: {m}"));
    let action = match which {
        SelfServiceWord::Register => Action::Register,
        SelfServiceWord::Me => Action::Me,
        SelfServiceWord::RegenerateKey => Action::RegenerateKey,
        SelfServiceWord::RegenerateChildKey => {
            let params: Vec<&str> = r
                .path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            match r.child_param.as_deref() {
                Some(p) if params.contains(&p) => Action::RegenerateChildKey { param: p.into() },
                Some(p) => {
                    err(format!(
                        "child_param `{p}` is not a parameter of path `{}`",
                        r.path
                    ));
                    return None;
                }
                None => {
                    err("selfservice = \"regenerate_child_key\" needs child_param, the path parameter naming the child account".to_owned());
                    return None;
                }
            }
        }
    };
    if selfservice.is_none() {
        err(
            "selfservice routes need a [selfservice] table (plan and fields of accounts)"
                .to_owned(),
        );
    }
    if r.ws.is_some() || r.upstream.is_some() {
        err("a selfservice route is answered by keygate; it takes no upstream or ws".to_owned());
    }
    let allowed = action.methods();
    for m in &r.methods {
        if !allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(m)) {
            let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
            err(format!(
                "selfservice `{}` answers {} only, not `{m}`",
                which.spelling(),
                list.join(" and ")
            ));
        }
    }
    Some(action)
}
