//! The thin booking service: REST API, store, join window, tokens (DESIGN §6).

pub mod admin_api;
pub mod agenda;
pub mod api;
pub mod calls;
pub mod calls_api;
pub mod catalog;
pub mod catalog_api;
pub mod email;
pub mod email_outbox;
pub mod feed;
pub mod ics;
pub mod invite_api;
pub mod link_seal;
pub mod pages;
pub mod personal_data;
pub mod reschedule;
pub mod store;
pub mod tokens;
pub mod webhook_api;
pub mod webhook_delivery;
pub mod webhooks;
pub mod window;
