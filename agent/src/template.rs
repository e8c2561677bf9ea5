//! Reading templates and attribute answers: one value of a template, a
//! boolean answer, and the policy's view of a template (and its forced
//! attributes applied back).

use keyward_policy::{Adjustments, Template};
use keyward_protocol::{AttrResult, AttrValue, Attribute, Value};

/// The value of `attr_type` in `template` if it is a boolean.
pub(crate) fn template_bool(template: &[Attribute], attr_type: u64) -> Option<bool> {
    template
        .iter()
        .find(|a| a.attr_type == attr_type)
        .and_then(Attribute::as_bool)
}

/// A boolean attribute answer, `None` when it is anything else.
pub(crate) fn result_bool(r: Option<&AttrResult>) -> Option<bool> {
    match r {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Bool(b)))) => Some(*b),
        _ => None,
    }
}

/// The policy's view of a protocol template (leaf values only).
pub(crate) fn judge<R>(template: &[Attribute], f: impl FnOnce(&Template<'_>) -> R) -> R {
    let mut bools = Vec::new();
    let mut ulongs = Vec::new();
    let mut bytes = Vec::new();
    for a in template {
        match &a.value {
            AttrValue::Leaf(Value::Bool(b)) => bools.push((a.attr_type, *b)),
            AttrValue::Leaf(Value::Ulong(u)) => ulongs.push((a.attr_type, *u)),
            AttrValue::Leaf(Value::Bytes(b)) => bytes.push((a.attr_type, b.as_slice())),
            _ => {}
        }
    }
    f(&Template {
        bools: &bools,
        ulongs: &ulongs,
        bytes: &bytes,
    })
}

/// Sets the forced attributes on `template` (replacing given values).
pub(crate) fn apply(template: &mut Vec<Attribute>, adj: &Adjustments) {
    for &(attr, value) in &adj.bools {
        template.retain(|a| a.attr_type != attr);
        template.push(Attribute::bool(attr, value));
    }
}
