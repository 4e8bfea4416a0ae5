//! Fields that return another area's object: [`Guarded`].
//!
//! A root query is authorized by its service function, but its objects
//! lead to others (`Command.device`, `Package.models`, the object a
//! mutation's payload returns). Each such field has the type
//! `Guarded<T>`, which is nullable in the schema and, when it is resolved,
//! asks `service::authz::require_read` whether the caller may read `T`'s
//! kind of object ([`Readable`]). Without the permission the field is null,
//! with the FORBIDDEN error at its path, and its siblings and parents come
//! back as usual; the same happens in subscriptions, which resolve their
//! pushes with the subscriber's context.
//!
//! Why a type and not a field guard: the check travels with the value, so
//! a field built in a `From` impl (no context at hand) and a resolver that
//! fetches are guarded the same way, and a field cannot be nullable by
//! mistake while its check is missing. The rule not to break: a field
//! whose type is an object of another area (or any area object inside a
//! mutation payload) is a `Guarded<T>`; `tests/it/authz_coverage.rs`
//! enumerates them from the schema and fails on one it does not know.

use std::borrow::Cow;

use async_graphql::parser::types::Field;
use async_graphql::registry::Registry;
use async_graphql::{ContextSelectionSet, OutputType, Positioned, ServerResult, Value};

use super::connection::Conn;
use crate::auth::Ctx;
use crate::error::Error;
use crate::service::authz::{self, ObjectKind};

/// A GraphQL type whose objects are read with the permission of their kind.
/// Each type says its kind next to its definition (`impl Readable for
/// Command` in `command.rs`), so this module names none of them.
pub trait Readable {
    const KIND: ObjectKind;
}

impl<T: Readable> Readable for Vec<T> {
    const KIND: ObjectKind = T::KIND;
}

impl<T: Readable> Readable for Option<T> {
    const KIND: ObjectKind = T::KIND;
}

impl<T: Readable + OutputType> Readable for Conn<T> {
    const KIND: ObjectKind = T::KIND;
}

/// A value of another area, shown only to callers who may read its kind;
/// nullable in the schema (null, with the error, when they may not).
pub struct Guarded<T>(async_graphql::Result<T>);

impl<T> Guarded<T> {
    pub fn new(value: T) -> Self {
        Self(Ok(value))
    }

    /// What a resolver fetched: an error (a denial by the service itself,
    /// a bad cursor) also ends up as null at this field.
    pub fn fetched(result: async_graphql::Result<T>) -> Self {
        Self(result)
    }
}

impl<T: Readable + OutputType> OutputType for Guarded<T> {
    fn type_name() -> Cow<'static, str> {
        T::type_name()
    }

    fn qualified_type_name() -> String {
        T::type_name().to_string()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        T::create_type_info(registry);
        T::type_name().to_string()
    }

    async fn resolve(&self, ctx: &ContextSelectionSet<'_>, field: &Positioned<Field>) -> ServerResult<Value> {
        let allowed =
            ctx.data::<Ctx>().and_then(|caller| authz::require_read(caller, T::KIND).map_err(Error::into_graphql));
        match allowed.and_then(|()| self.0.as_ref().map_err(Clone::clone)) {
            Ok(value) => match value.resolve(ctx, field).await {
                Ok(value) => Ok(value),
                // A nullable field stops an error from below, like `Option`.
                Err(err) => {
                    ctx.add_error(err);
                    Ok(Value::Null)
                }
            },
            Err(err) => {
                ctx.add_error(ctx.set_error_path(err.into_server_error(field.pos)));
                Ok(Value::Null)
            }
        }
    }
}
