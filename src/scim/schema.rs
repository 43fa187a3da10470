//! The SCIM schemas Portcullis serves, as data: one table drives reading request bodies,
//! PATCH paths, filters, `attributes`, and what `/Schemas` advertises, so they cannot disagree.

use serde_json::{json, Value};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Boolean,
    Complex,
    Reference,
    DateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    /// Only when `attributes` names it (RFC 7643 §7 "request").
    Request,
}

#[derive(Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Type,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub server_unique: bool,
    pub sub: &'static [Attr],
    pub canonical: &'static [&'static str],
    /// What a reference may point at (RFC 7643 §7 `referenceTypes`): exactly what the
    /// server accepts, since testers and clients build their requests from it.
    pub reference_types: &'static [&'static str],
    pub description: &'static str,
}

impl Attr {
    const fn new(name: &'static str, ty: Type, description: &'static str) -> Attr {
        Attr {
            name,
            ty,
            multi: false,
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            returned: Returned::Default,
            server_unique: false,
            sub: &[],
            canonical: &[],
            reference_types: &[],
            description,
        }
    }
    const fn s(name: &'static str, description: &'static str) -> Attr {
        Attr::new(name, Type::String, description)
    }
    const fn multi(mut self) -> Attr {
        self.multi = true;
        self
    }
    const fn required(mut self) -> Attr {
        self.required = true;
        self
    }
    const fn exact(mut self) -> Attr {
        self.case_exact = true;
        self
    }
    const fn read_only(mut self) -> Attr {
        self.mutability = Mutability::ReadOnly;
        self
    }
    const fn immutable(mut self) -> Attr {
        self.mutability = Mutability::Immutable;
        self
    }
    const fn write_only(mut self) -> Attr {
        self.mutability = Mutability::WriteOnly;
        self.returned = Returned::Never;
        self
    }
    const fn always(mut self) -> Attr {
        self.returned = Returned::Always;
        self
    }
    const fn on_request(mut self) -> Attr {
        self.returned = Returned::Request;
        self
    }
    const fn unique(mut self) -> Attr {
        self.server_unique = true;
        self
    }
    const fn sub(mut self, sub: &'static [Attr]) -> Attr {
        self.ty = Type::Complex;
        self.sub = sub;
        self
    }
    const fn reference(name: &'static str, to: &'static [&'static str], d: &'static str) -> Attr {
        let mut a = Attr::new(name, Type::Reference, d);
        a.reference_types = to;
        a
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Attr {
        self.canonical = values;
        self
    }

    /// A sub-attribute by name, case-insensitively.
    pub fn sub_attr(&self, name: &str) -> Option<&'static Attr> {
        self.sub.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// Multi-valued complex attributes whose values are identified by `value`.
    pub fn has_value_sub(&self) -> bool {
        self.sub_attr("value").is_some()
    }

    pub fn writable(&self) -> bool {
        !matches!(self.mutability, Mutability::ReadOnly)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "type": match self.ty {
                Type::String => "string",
                Type::Boolean => "boolean",
                Type::Complex => "complex",
                Type::Reference => "reference",
                Type::DateTime => "dateTime",
            },
            "multiValued": self.multi,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": match self.mutability {
                Mutability::ReadOnly => "readOnly",
                Mutability::ReadWrite => "readWrite",
                Mutability::Immutable => "immutable",
                Mutability::WriteOnly => "writeOnly",
            },
            "returned": match self.returned {
                Returned::Always => "always",
                Returned::Never => "never",
                Returned::Default => "default",
                Returned::Request => "request",
            },
            "uniqueness": if self.server_unique { "server" } else { "none" },
        });
        if !self.sub.is_empty() {
            v["subAttributes"] = self.sub.iter().map(Attr::to_json).collect();
        }
        if !self.canonical.is_empty() {
            v["canonicalValues"] = json!(self.canonical);
        }
        if self.ty == Type::Reference {
            v["referenceTypes"] = json!(self.reference_types);
        }
        v
    }
}

const TYPES_EMAIL: &[&str] = &["work", "home", "other"];

/// value / display / type / primary: the shape of most multi-valued attributes.
macro_rules! plural {
    ($types:expr) => {
        &[
            Attr::s("value", "The value."),
            Attr::s("display", "A human-readable name."),
            Attr::s("type", "A label: work, home, ...").canonical($types),
            Attr::new(
                "primary",
                Type::Boolean,
                "The preferred value; at most one.",
            ),
        ]
    };
}

pub static USER_ATTRS: &[Attr] = &[
    Attr::s(
        "userName",
        "Unique identifier of the user in the organization.",
    )
    .required()
    .unique(),
    Attr::s("name", "The user's name.").sub(&[
        Attr::s("formatted", "The full name, formatted for display."),
        Attr::s("familyName", "Family name."),
        Attr::s("givenName", "Given name."),
        Attr::s("middleName", "Middle name."),
        Attr::s("honorificPrefix", "Honorific prefix, e.g. Ms."),
        Attr::s("honorificSuffix", "Honorific suffix, e.g. III."),
    ]),
    Attr::s("displayName", "The name to display."),
    Attr::s("nickName", "Casual name."),
    Attr::reference("profileUrl", &["external"], "URL of the user's profile."),
    Attr::s("title", "Job title."),
    Attr::s(
        "userType",
        "Relationship to the organization, e.g. Employee.",
    ),
    Attr::s("preferredLanguage", "Preferred language, e.g. en-US."),
    Attr::s("locale", "Locale for formatting, e.g. en-US."),
    Attr::s("timezone", "Time zone, e.g. America/Los_Angeles."),
    Attr::new(
        "active",
        Type::Boolean,
        "false deactivates the user; the user is still returned.",
    ),
    Attr::s(
        "password",
        "Write-only; stored as an argon2 hash, never returned.",
    )
    .write_only(),
    Attr::s("emails", "Email addresses.").multi().sub(&[
        Attr::s("value", "The address."),
        Attr::s("display", "A human-readable name."),
        Attr::s("type", "work, home, other").canonical(TYPES_EMAIL),
        Attr::new(
            "primary",
            Type::Boolean,
            "The preferred address; at most one.",
        ),
        Attr::new(
            "verified",
            Type::Boolean,
            "Portcullis extension: whether the user verified this address by email \
             (POST /api/v1/orgs/{org_id}/users/{id}/email/verification). Read-only; a changed \
             address is unverified.",
        )
        .read_only(),
    ]),
    Attr::s("phoneNumbers", "Phone numbers.")
        .multi()
        .sub(plural!(&[
            "work", "home", "mobile", "fax", "pager", "other"
        ])),
    Attr::s("ims", "Instant messaging addresses.")
        .multi()
        .sub(plural!(&[])),
    Attr::s("photos", "Photo URLs.")
        .multi()
        .sub(plural!(&["photo", "thumbnail"])),
    Attr::s("addresses", "Physical addresses.").multi().sub(&[
        Attr::s("formatted", "The full address."),
        Attr::s("streetAddress", "Street."),
        Attr::s("locality", "City."),
        Attr::s("region", "State or region."),
        Attr::s("postalCode", "Postal code."),
        Attr::s("country", "Country (ISO 3166-1 alpha-2)."),
        Attr::s("type", "work, home, other").canonical(TYPES_EMAIL),
        Attr::new(
            "primary",
            Type::Boolean,
            "The preferred address; at most one.",
        ),
    ]),
    Attr::s(
        "groups",
        "Groups the user is in, directly or through nested groups.",
    )
    .multi()
    .read_only()
    .sub(&[
        Attr::s("value", "The group's id.").read_only(),
        Attr::reference("$ref", &["Group"], "URI of the group.").read_only(),
        Attr::s("display", "The group's displayName.").read_only(),
        Attr::s("type", "direct or indirect.")
            .read_only()
            .canonical(&["direct", "indirect"]),
    ]),
    Attr::s("entitlements", "Entitlements.")
        .multi()
        .sub(plural!(&[])),
    Attr::s("roles", "Roles.").multi().sub(plural!(&[])),
    Attr::s("x509Certificates", "Certificates.")
        .multi()
        .sub(plural!(&[])),
];

pub static ENTERPRISE_ATTRS: &[Attr] = &[
    Attr::s("employeeNumber", "Employee number."),
    Attr::s("costCenter", "Cost center."),
    Attr::s("organization", "Organization."),
    Attr::s("division", "Division."),
    Attr::s("department", "Department."),
    Attr::s("manager", "The user's manager.").sub(&[
        Attr::s("value", "The manager's id."),
        Attr::reference("$ref", &["User"], "URI of the manager."),
        Attr::s("displayName", "The manager's displayName.").read_only(),
    ]),
];

pub static GROUP_ATTRS: &[Attr] = &[
    Attr::s(
        "displayName",
        "The group's name, unique in the organization.",
    )
    .required()
    .unique(),
    Attr::s(
        "members",
        "Members: users or groups. A list (GET /Groups, /.search) leaves them out unless \
         `attributes` names them; GET /Groups/{id} returns them.",
    )
    .multi()
    .sub(&[
        Attr::s("value", "The member's id.").immutable(),
        Attr::reference("$ref", &["User", "Group"], "URI of the member.").immutable(),
        Attr::s(
            "display",
            "The member's displayName or userName; returned only when `attributes` names \
                 members.display.",
        )
        .read_only()
        .on_request(),
        Attr::s("type", "User or Group.")
            .immutable()
            .canonical(&["User", "Group"]),
    ]),
];

/// Attributes every resource has (RFC 7643 §3.1).
pub static COMMON_ATTRS: &[Attr] = &[
    Attr::s("id", "Unique id, assigned by the service.")
        .exact()
        .read_only()
        .always(),
    Attr::s("externalId", "The provisioning client's own id.").exact(),
    Attr::s("meta", "Resource metadata.").read_only().sub(&[
        Attr::s("resourceType", "User or Group.").read_only(),
        Attr::new("created", Type::DateTime, "When it was created.").read_only(),
        Attr::new("lastModified", Type::DateTime, "When it last changed.").read_only(),
        Attr::reference("location", &["uri"], "Its URI.").read_only(),
        Attr::s("version", "Its ETag.").read_only(),
    ]),
];

pub static SCHEMAS_ATTR: Attr = Attr::reference("schemas", &["uri"], "Schema URIs.")
    .multi()
    .always();

/// Which resource a type is: code that differs between users and groups matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
}

/// A resource type: User or Group, with its schemas.
#[derive(Debug)]
pub struct ResourceType {
    pub kind: Kind,
    pub name: &'static str,
    pub endpoint: &'static str,
    pub schema: &'static str,
    pub attrs: &'static [Attr],
    pub extensions: &'static [(&'static str, &'static [Attr])],
}

pub static USER_TYPE: ResourceType = ResourceType {
    kind: Kind::User,
    name: "User",
    endpoint: "Users",
    schema: USER,
    attrs: USER_ATTRS,
    extensions: &[(ENTERPRISE, ENTERPRISE_ATTRS)],
};

pub static GROUP_TYPE: ResourceType = ResourceType {
    kind: Kind::Group,
    name: "Group",
    endpoint: "Groups",
    schema: GROUP,
    attrs: GROUP_ATTRS,
    extensions: &[],
};

/// Where a name resolved to: a core attribute, or one in an extension (by its URN).
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub attr: &'static Attr,
    pub extension: Option<&'static str>,
}

impl ResourceType {
    /// A top-level attribute by name, case-insensitively (core and common attributes).
    pub fn attr(&self, name: &str) -> Option<&'static Attr> {
        self.attrs
            .iter()
            .chain(COMMON_ATTRS.iter())
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// An extension by URN, case-insensitively.
    pub fn extension(&self, urn: &str) -> Option<(&'static str, &'static [Attr])> {
        self.extensions
            .iter()
            .copied()
            .find(|(u, _)| u.eq_ignore_ascii_case(urn))
    }

    /// Resolves an attribute path's first part, which may carry a schema URN prefix
    /// (`urn:...:User:userName`, `urn:...:enterprise:2.0:User:manager`). Returns the attribute
    /// and the rest of the name after it (`.sub` parts stay with the caller).
    pub fn resolve(&self, name: &str) -> Option<Resolved> {
        if is_urn(name) {
            let (urn, attr) = name.rsplit_once(':')?;
            if urn.eq_ignore_ascii_case(self.schema) {
                return self.resolve(attr);
            }
            let (urn, attrs) = self.extension(urn)?;
            let attr = attrs.iter().find(|a| a.name.eq_ignore_ascii_case(attr))?;
            return Some(Resolved {
                attr,
                extension: Some(urn),
            });
        }
        if name.eq_ignore_ascii_case("schemas") {
            return Some(Resolved {
                attr: &SCHEMAS_ATTR,
                extension: None,
            });
        }
        self.attr(name).map(|attr| Resolved {
            attr,
            extension: None,
        })
    }

    pub fn schema_json(&self, base: &str) -> Vec<Value> {
        let mut out = vec![schema_doc(
            self.schema,
            self.name,
            self.attrs.iter().chain(COMMON_ATTRS.iter().skip(1).take(1)),
            base,
        )];
        for (urn, attrs) in self.extensions {
            out.push(schema_doc(urn, "EnterpriseUser", attrs.iter(), base));
        }
        out
    }

    pub fn resource_type_json(&self, base: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": self.name,
            "name": self.name,
            "endpoint": format!("/{}", self.endpoint),
            "description": format!("{}s of the organization", self.name),
            "schema": self.schema,
            "schemaExtensions": self.extensions.iter()
                .map(|(urn, _)| json!({"schema": urn, "required": false}))
                .collect::<Vec<_>>(),
            "meta": {
                "resourceType": "ResourceType",
                "location": format!("{base}/ResourceTypes/{}", self.name),
            },
        })
    }
}

fn schema_doc<'a>(
    id: &str,
    name: &str,
    attrs: impl Iterator<Item = &'a Attr>,
    base: &str,
) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": id,
        "name": name,
        "description": format!("{name} attributes"),
        "attributes": attrs.map(Attr::to_json).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")},
    })
}

/// Whether a name starts with `urn:` (any case): a schema URI or a URN-prefixed path.
pub fn is_urn(s: &str) -> bool {
    s.len() > 4 && s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

pub fn resource_types() -> [&'static ResourceType; 2] {
    [&USER_TYPE, &GROUP_TYPE]
}
