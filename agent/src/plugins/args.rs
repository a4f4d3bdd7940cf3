//! Reading the positional arguments of plugin commands, with the refusals the caller sees.

use serde_json::Value;

use crate::dispatch::Refusal;
use crate::jsonrpc::ErrorCode;

/// A bad-arguments refusal of `method`.
pub(crate) fn bad_argument(method: &str, why: String) -> Refusal {
    (ErrorCode::COMMAND_BAD_ARGUMENTS, format!("{method}: {why}"))
}

/// Optional text argument `i`: absent or null is `None`.
pub(crate) fn string_arg(
    method: &str,
    args: &[Value],
    i: usize,
    param: &str,
) -> Result<Option<String>, Refusal> {
    match args.get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_argument(
            method,
            format!("{param} must be a string, not {other}"),
        )),
    }
}

/// Required, non-empty text argument `i`.
pub(crate) fn required(
    method: &str,
    args: &[Value],
    i: usize,
    param: &str,
) -> Result<String, Refusal> {
    match string_arg(method, args, i, param)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(bad_argument(method, format!("{param} is required"))),
    }
}

/// Optional flag `i`: absent or null is false; `"true"`/`"false"` are taken as well, as
/// command lines pass them.
pub(crate) fn bool_arg(
    method: &str,
    args: &[Value],
    i: usize,
    param: &str,
) -> Result<bool, Refusal> {
    match args.get(i) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(bad_argument(
            method,
            format!("{param} must be true or false, not {other}"),
        )),
    }
}
