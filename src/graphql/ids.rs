//! Ids in GraphQL arguments: the one parser. An `ID` that is not a UUID is
//! INVALID_INPUT on `field`, "not a {kind} id", saying where ids of that
//! kind come from (`Error::bad_id`).

use async_graphql::{ID, Result};
use uuid::Uuid;

use crate::error::Error;

/// The UUID of `id`, given as argument `field`, an id of `kind`.
pub(crate) fn parse_id(field: &str, kind: crate::error::ResourceKind, id: &ID) -> Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| Error::bad_id(field, kind).into_graphql())
}
