//! The GraphQL API: thin resolvers, one module per area (same names as
//! `service/`). A resolver reads its arguments, calls one service function
//! and shapes the result; it holds no rule and checks no permission.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod command;
pub mod connection;
pub mod content;
pub mod deployment;
pub mod device;
pub mod device_group;
pub mod device_model;
pub mod device_relations;
pub mod enrollment;
pub mod ids;
pub mod limits;
pub mod package;
pub mod role;
pub mod upload;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SchemaBuilder};

use crate::app::App;
use crate::auth::Ctx;
use crate::config::GraphqlConfig;

#[derive(MergedObject, Default)]
pub struct Query(
    auth::AuthQuery,
    role::RoleQuery,
    audit::AuditQuery,
    content::ContentQuery,
    device_model::DeviceModelQuery,
    device::DeviceQuery,
    enrollment::EnrollmentQuery,
    device_group::GroupQuery,
    deployment::DeploymentQuery,
    command::CommandQuery,
    package::PackageQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    role::RoleMutation,
    content::ContentMutation,
    device_model::DeviceModelMutation,
    device::DeviceMutation,
    enrollment::EnrollmentMutation,
    device_group::GroupMutation,
    deployment::DeploymentMutation,
    command::CommandMutation,
    package::PackageMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(
    audit::AuditSubscription,
    content::ContentSubscription,
    deployment::DeploymentSubscription,
    command::CommandSubscription,
);

pub type ApiSchema = Schema<Query, Mutation, Subscription>;

fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
}

/// The schema the server runs, with its limits.
pub fn build(app: App, config: &GraphqlConfig) -> ApiSchema {
    let mut builder = builder()
        .data(app)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .extension(limits::ComplexityProbe);
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL that `schema.graphql` holds.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// The application, from a resolver's context.
pub(crate) fn app<'a>(ctx: &Context<'a>) -> &'a App {
    ctx.data_unchecked::<App>()
}

/// The caller, from a resolver's context.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> &'a Ctx {
    ctx.data_unchecked::<Ctx>()
}
