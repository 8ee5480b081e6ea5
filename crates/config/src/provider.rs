//! The services this client knows, and the endpoints each one uses unless told otherwise.
//!
//! CREODIAS and the Copernicus Data Space Ecosystem run the same software (Keycloak, zipper,
//! OData catalogue) at different addresses with different client ids, and they want the access
//! token passed differently. Everything that differs between them lives here, so adding a
//! provider is one enum variant and one `match` arm.

use std::fmt;
use std::str::FromStr;

/// A service that hosts EODATA. The default is [`Provider::Creodias`], the tutorial's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Provider {
    /// CREODIAS (CloudFerro), `identity.cloudferro.com` and `zipper.creodias.eu`.
    #[default]
    Creodias,
    /// Copernicus Data Space Ecosystem, `*.dataspace.copernicus.eu`.
    Cdse,
}

/// How a download request carries the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenPassing {
    /// `?token=<access_token>` in the query string, as CREODIAS' zipper and the tutorial do.
    /// It survives redirects between hosts, which drop an `Authorization` header.
    Query,
    /// `Authorization: Bearer <access_token>`, as CDSE documents; keep it on redirects to known
    /// hosts.
    Bearer,
}

/// The endpoints a provider uses when neither flags, environment nor file name others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderDefaults {
    pub token_url: &'static str,
    pub client_id: &'static str,
    /// A template: `{id}` is replaced by the product's UUID.
    pub download_url: &'static str,
    pub catalogue_url: &'static str,
}

impl Provider {
    /// Every provider, in the order error messages list them.
    pub const ALL: [Provider; 2] = [Provider::Creodias, Provider::Cdse];

    /// The name used in flags, environment and files (`--provider cdse`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Creodias => "creodias",
            Provider::Cdse => "cdse",
        }
    }

    /// Published endpoints (see docs/protocol.md).
    pub fn defaults(self) -> ProviderDefaults {
        match self {
            Provider::Creodias => ProviderDefaults {
                token_url: "https://identity.cloudferro.com/auth/realms/Creodias-new/protocol/openid-connect/token",
                client_id: "CLOUDFERRO_PUBLIC",
                download_url: "https://zipper.creodias.eu/odata/v1/Products({id})/$value",
                catalogue_url: "https://datahub.creodias.eu/odata/v1",
            },
            Provider::Cdse => ProviderDefaults {
                token_url: "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
                client_id: "cdse-public",
                download_url: "https://download.dataspace.copernicus.eu/odata/v1/Products({id})/$value",
                catalogue_url: "https://catalogue.dataspace.copernicus.eu/odata/v1",
            },
        }
    }

    /// How this provider's download service wants the token.
    pub fn token_passing(self) -> TokenPassing {
        match self {
            Provider::Creodias => TokenPassing::Query,
            Provider::Cdse => TokenPassing::Bearer,
        }
    }

    /// `"creodias, cdse"`, for messages that list the valid names.
    pub fn valid_names() -> String {
        Provider::ALL.map(Provider::name).join(", ")
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name given for an unknown provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    /// Case-insensitive, surrounding blanks ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Provider::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>().unwrap(), p);
        }
        assert_eq!(" CDSE ".parse::<Provider>().unwrap(), Provider::Cdse);
        assert!("copernicus".parse::<Provider>().is_err());
        assert_eq!(Provider::valid_names(), "creodias, cdse");
    }

    #[test]
    fn token_passing_follows_provider() {
        assert_eq!(Provider::Creodias.token_passing(), TokenPassing::Query);
        assert_eq!(Provider::Cdse.token_passing(), TokenPassing::Bearer);
    }

    #[test]
    fn defaults_are_valid_urls() {
        for p in Provider::ALL {
            let d = p.defaults();
            url::Url::parse(d.token_url).unwrap();
            url::Url::parse(d.catalogue_url).unwrap();
            assert!(d.download_url.contains("{id}"));
        }
    }
}
