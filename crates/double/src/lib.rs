//! fake-creodias: a local double of CREODIAS (Keycloak, zipper, OData catalogue).
pub mod generate;
