//! JWT-shaped tokens and UUIDs.
//!
//! Clients read `exp`/`iat` from the access token's payload (`docs/protocol.md`, "Identity"),
//! so tokens are real `header.payload.signature` strings in base64url. The signature is random
//! bytes: the double recognises its tokens by looking the whole string up in its table,
//! never by verifying a signature, so clients can't forge tokens by editing the payload.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng;
use serde_json::json;

/// What a token carries; the double keeps the same facts in its token table.
pub(crate) struct Claims<'a> {
    pub jti: &'a str,
    pub sub: &'a str,
    pub sid: &'a str,
    pub iat: u64,
    pub exp: u64,
    /// `"Bearer"` for access tokens, `"Refresh"` for refresh tokens, as Keycloak writes `typ`.
    pub typ: &'a str,
    pub issuer: &'a str,
    pub client_id: &'a str,
}

pub(crate) fn mint(claims: &Claims<'_>, rng: &mut impl Rng) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "fake-creodias"});
    let payload = json!({
        "exp": claims.exp,
        "iat": claims.iat,
        "jti": claims.jti,
        "iss": claims.issuer,
        "aud": "account",
        "sub": claims.sub,
        "typ": claims.typ,
        "azp": claims.client_id,
        "sid": claims.sid,
        "session_state": claims.sid,
        "scope": "profile email",
        "preferred_username": claims.sub,
    });
    // 256 random bytes: the size of an RS256 signature, so token lengths look like Keycloak's.
    let mut sig = [0u8; 256];
    rng.fill(&mut sig[..]);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// A random (version 4) UUID in its usual text form.
pub(crate) fn uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn token_payload_decodes_to_the_claims() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t = mint(
            &Claims {
                jti: "j1",
                sub: "u",
                sid: "s",
                iat: 10,
                exp: 20,
                typ: "Bearer",
                issuer: "http://x",
                client_id: "c",
            },
            &mut rng,
        );
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload["exp"], 20);
        assert_eq!(payload["iat"], 10);
        assert_eq!(payload["jti"], "j1");
    }

    #[test]
    fn uuids_have_the_usual_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let u = uuid(&mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert_ne!(u, uuid(&mut rng));
    }
}
