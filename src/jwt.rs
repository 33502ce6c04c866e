//! RS256 JSON Web Tokens: signing with a service-account key (RFC 7519, RFC 7515; RS256 is
//! RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 section 3.3).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::PrivateKey;
use serde::Serialize;

/// A parsed RSA private key. Parsing costs 15-20 ms inside wasm: do it once per run.
pub struct RsaSigner {
    key: SigningKey<Sha256>,
    key_id: String,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

impl RsaSigner {
    /// Parses a PKCS#8 PEM key. The error never contains key material.
    pub fn from_pkcs8_pem(pem: &str, key_id: &str) -> Result<RsaSigner, String> {
        let key = PrivateKey::from_pkcs8_pem(pem)
            .map_err(|_| "the private_key is not a valid PKCS#8 RSA key".to_string())?;
        Ok(RsaSigner {
            key: SigningKey::<Sha256>::new(key),
            key_id: key_id.to_string(),
        })
    }

    /// `base64url(header).base64url(claims).base64url(signature)`, without padding.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, String> {
        let header = serde_json::to_vec(&Header {
            alg: "RS256",
            typ: "JWT",
            kid: &self.key_id,
        })
        .map_err(|e| e.to_string())?;
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = self
            .key
            .try_sign(token.as_bytes())
            .map_err(|_| "RS256 signing failed".to_string())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }
}

/// A JWT split into its parts, before any check.
#[derive(Debug, Clone, PartialEq)]
pub struct UnverifiedJwt {
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
    signed: String,
    signature: Vec<u8>,
}

/// Tokens longer than this are refused before any decoding.
const MAX_JWT_BYTES: usize = 16 * 1024;

/// Splits and decodes a compact JWT. Says nothing about its validity.
pub fn decode(token: &str) -> Result<UnverifiedJwt, &'static str> {
    if token.len() > MAX_JWT_BYTES {
        return Err("token too long");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT");
    };
    let part = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| "not base64url");
    let header: serde_json::Value =
        serde_json::from_slice(&part(h)?).map_err(|_| "header is not JSON")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&part(c)?).map_err(|_| "claims are not JSON")?;
    if !header.is_object() || !claims.is_object() {
        return Err("header or claims are not objects");
    }
    Ok(UnverifiedJwt {
        header,
        claims,
        signed: format!("{h}.{c}"),
        signature: part(s)?,
    })
}

/// An RSA public key from a JWK's `n` and `e` (base64url, big-endian).
pub struct RsaVerifier {
    key: rsa::pkcs1v15::VerifyingKey<Sha256>,
}

impl RsaVerifier {
    pub fn from_jwk(n: &str, e: &str) -> Result<RsaVerifier, &'static str> {
        let n = URL_SAFE_NO_PAD
            .decode(n)
            .map_err(|_| "JWK n is not base64url")?;
        let e = URL_SAFE_NO_PAD
            .decode(e)
            .map_err(|_| "JWK e is not base64url")?;
        if n.is_empty() || e.is_empty() || e.len() > 8 {
            return Err("JWK has an unusable modulus or exponent");
        }
        let key = rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&e),
        )
        .map_err(|_| "JWK is not a valid RSA public key")?;
        Ok(RsaVerifier {
            key: rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key),
        })
    }

    /// Checks an RS256 signature over the token's header and claims.
    pub fn verify(&self, token: &UnverifiedJwt) -> bool {
        use rsa::signature::Verifier;
        match rsa::pkcs1v15::Signature::try_from(token.signature.as_slice()) {
            Ok(sig) => self.key.verify(token.signed.as_bytes(), &sig).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (RsaSigner, RsaVerifier) {
        use rsa::pkcs8::EncodePrivateKey;
        use rsa::traits::PublicKeyParts;
        use rsa::Generate;
        let private = PrivateKey::generate();
        let pem = private.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let public = private.to_public_key();
        let n = URL_SAFE_NO_PAD.encode(public.n().to_be_bytes_trimmed_vartime());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_be_bytes_trimmed_vartime());
        (
            RsaSigner::from_pkcs8_pem(&pem, "k1").unwrap(),
            RsaVerifier::from_jwk(&n, &e).unwrap(),
        )
    }

    #[test]
    fn a_signed_token_verifies_and_a_tampered_one_does_not() {
        let (signer, verifier) = key();
        let token = signer
            .sign(&serde_json::json!({"sub": "a", "n": 1}))
            .unwrap();
        let decoded = decode(&token).unwrap();
        assert_eq!(decoded.header["alg"], "RS256");
        assert_eq!(decoded.header["kid"], "k1");
        assert_eq!(decoded.claims["sub"], "a");
        assert!(verifier.verify(&decoded));

        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"b","n":1}"#);
        assert!(!verifier.verify(&decode(&parts.join(".")).unwrap()));
        let (_, other) = key();
        assert!(!other.verify(&decoded));
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_check() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.sig",
            "e30.!!.sig",
            "bnVsbA.e30.c2ln",
            &"a".repeat(20_000),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(RsaVerifier::from_jwk("", "AQAB").is_err());
        assert!(RsaVerifier::from_jwk("AQAB", "AQAB").is_err());
        assert!(RsaVerifier::from_jwk("!!", "AQAB").is_err());
    }
}
