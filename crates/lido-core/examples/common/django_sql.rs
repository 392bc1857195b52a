//! Statements as Django writes them, for the cost examples.

pub const PK_LOOKUP: &str = "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\", \
    \"auth_user\".\"last_login\", \"auth_user\".\"is_superuser\", \"auth_user\".\"username\", \
    \"auth_user\".\"first_name\", \"auth_user\".\"last_name\", \"auth_user\".\"email\", \
    \"auth_user\".\"is_staff\", \"auth_user\".\"is_active\", \"auth_user\".\"date_joined\" \
    FROM \"auth_user\" WHERE \"auth_user\".\"id\" = %s LIMIT 21";

pub const INSERT: &str = "INSERT INTO \"app_item\" (\"name\", \"created\", \"owner_id\") \
    VALUES (%s, %s, %s) RETURNING \"app_item\".\"id\"";

pub const UPDATE: &str = "UPDATE \"app_item\" SET \"name\" = %s WHERE \"app_item\".\"id\" = %s";

pub const SAVEPOINT: &str = "SAVEPOINT \"s140245_x1\"";
