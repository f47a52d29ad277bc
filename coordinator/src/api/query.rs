//! Reading a raw query string the way every paged route does: `name=value` pairs, integers
//! answered 400 with the parameter's name, a page size within bounds.

use super::ApiError;

/// The `name=value` pairs of `raw` (`None`: no `?` at all); a name without `=` has an empty value.
pub(crate) fn pairs(raw: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `value` of parameter `name` as a non-negative integer.
pub(crate) fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse::<u64>().map_err(|_| ApiError::bad(name, format!("{value:?} is not a non-negative integer")))
}

/// `value` of the `limit` parameter: a page size within 1..=`max`.
pub(crate) fn limit(value: &str, max: usize) -> Result<usize, ApiError> {
    let n = number("limit", value)?;
    if n == 0 || n > max as u64 {
        return Err(ApiError::bad("limit", format!("{n} is outside 1..={max}")));
    }
    Ok(n as usize)
}
