//! The query of `GET /events?since=SEQ&limit=N`: parsed here so a bad cursor is answered 400
//! with the parameter's name, like a bad body field of the other routes.

use super::ApiError;
use super::query::{limit, number, pairs};
use crate::events::{DEFAULT_PAGE, MAX_PAGE};

/// What `GET /events` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsQuery {
    /// The first sequence number wanted (the `next` of the previous answer); `None`: the newest.
    pub since: Option<u64>,
    /// The most records wanted (1..=[`MAX_PAGE`], default [`DEFAULT_PAGE`]).
    pub limit: usize,
}

impl EventsQuery {
    /// Parses a raw query string (`None`: no `?` at all). Unknown parameters are refused: a
    /// typo'd `sinse=` would otherwise silently answer the newest records instead of new ones.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut query = Self { since: None, limit: DEFAULT_PAGE };
        for (name, value) in pairs(raw) {
            match name {
                "since" => query.since = Some(number(name, value)?),
                "limit" => query.limit = limit(value, MAX_PAGE)?,
                _ => return Err(ApiError::bad(name, "unknown parameter (expected since, limit)")),
            }
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::EventsQuery;
    use crate::api::ApiError;

    #[test]
    fn since_and_limit_parse_and_bad_ones_name_their_parameter() {
        assert_eq!(EventsQuery::parse(None).unwrap(), EventsQuery { since: None, limit: 50 });
        assert_eq!(EventsQuery::parse(Some("since=7&limit=3")).unwrap(), EventsQuery { since: Some(7), limit: 3 });
        let field = |raw| match EventsQuery::parse(Some(raw)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(field("since=-1"), "since");
        assert_eq!(field("limit=0"), "limit");
        assert_eq!(field("limit=1001"), "limit");
        assert_eq!(field("sinse=3"), "sinse");
    }
}
