//! Relay connections (`edges`, `pageInfo`, `totalCount`) for every list.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{OutputType, SimpleObject};

use crate::service::pagination::Page;

#[derive(SimpleObject)]
pub struct ConnectionFields {
    /// Items matching the filter, over all pages.
    pub total_count: u64,
}

pub type Conn<N> = Connection<String, N, ConnectionFields, EmptyFields>;

/// Shape a service page as a connection, mapping each item to its node.
pub fn from_page<T, N: OutputType>(page: Page<T>, has_previous_page: bool, node: impl Fn(T) -> N) -> Conn<N> {
    let mut connection = Connection::with_additional_fields(
        has_previous_page,
        page.has_next_page,
        ConnectionFields { total_count: page.total_count },
    );
    connection.edges.extend(page.items.into_iter().map(|(cursor, item)| Edge::new(cursor, node(item))));
    connection
}
