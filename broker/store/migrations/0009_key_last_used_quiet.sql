-- api_keys.last_used_at is written by every node's flush loop (at most once
-- a minute per key in use): that changes nothing a request is decided by, so
-- it must not tell every broker to drop the key from its cache (their next
-- sends would each read it again). Any other change still does.
CREATE OR REPLACE FUNCTION smsdora_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(OLD) - 'last_used_at' = to_jsonb(NEW) - 'last_used_at' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('smsdora_key_changed', OLD.id::text);
    RETURN NULL;
END
$$;
