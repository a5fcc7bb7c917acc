-- smsdora's full current schema, GENERATED: `make schema` (python -m
-- broker.store.dump_schema) writes it from a database freshly migrated with
-- broker/store/migrations/NNNN_*.sql. Do not edit it; add a migration. The
-- comments that explain the tables are in the migrations. Data is not
-- dumped: 0001 also inserts the `default` plan. To make a database, run
-- `smsdora migrate`, not this file: it is for reading.

--
-- Name: devices; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.devices (
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    name text NOT NULL,
    token_prefix text NOT NULL,
    token_hash bytea NOT NULL,
    send_rate integer DEFAULT 30 NOT NULL,
    active boolean DEFAULT true NOT NULL,
    last_seen_at timestamp with time zone,
    health jsonb,
    app_version text,
    online_node text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    transport text DEFAULT 'websocket'::text NOT NULL,
    push_token text,
    sim_cards jsonb,
    CONSTRAINT devices_transport_check CHECK ((transport = ANY (ARRAY['websocket'::text, 'smsgate'::text])))
);

--
-- Name: smsdora_device_event(public.devices, boolean, timestamp with time zone, jsonb, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_device_event(d public.devices, p_online boolean, p_at timestamp with time zone, p_health jsonb, p_ver text) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT smsdora_emit(d.account_id,
        CASE WHEN p_online THEN 'device.online' ELSE 'device.offline' END, NULL,
        jsonb_build_object('id', d.id, 'deviceName', d.name, 'online', p_online,
            'lastSeen', smsdora_iso(p_at), 'active', d.active, 'sendRate', d.send_rate,
            'health', COALESCE(p_health, d.health),
            'appVersion', COALESCE(p_ver, d.app_version), 'transport', d.transport), p_at)
$$;

--
-- Name: smsdora_emit(uuid, text, uuid, jsonb, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_emit(p_account uuid, p_type text, p_message uuid, p_data jsonb, p_at timestamp with time zone) RETURNS integer
    LANGUAGE sql
    AS $$
    WITH e AS (
        INSERT INTO webhook_events (webhook_id, account_id, type, message_id, data, occurred_at)
        SELECT w.id, p_account, p_type, p_message, p_data, p_at
          FROM webhooks w
         WHERE w.account_id = p_account AND w.enabled AND w.events && ARRAY['*', p_type]
        RETURNING 1)
    SELECT count(*)::integer FROM e
$$;

--
-- Name: smsdora_history_events(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_history_events() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (webhook_id, account_id, type, message_id, data, occurred_at)
    SELECT w.id, m.account_id, 'message.' || n.status, n.message_id,
           jsonb_build_object(
               'id', m.id, 'recipient', m.recipient, 'message', m.body, 'status', n.status,
               'device', CASE WHEN n.device_id IS NULL THEN NULL
                              ELSE jsonb_build_object('id', n.device_id, 'deviceName', d.name) END,
               'error', n.error, 'createdAt', smsdora_iso(m.created_at)),
           n.at
      FROM new_rows n
      JOIN messages m ON m.id = n.message_id
      JOIN webhooks w ON w.account_id = m.account_id AND w.enabled
                     AND w.events && ARRAY['*', 'message.' || n.status]
      LEFT JOIN devices d ON d.id = n.device_id
     -- `w.id IS NOT NULL` (always true here) ties the check to the join with
     -- the endpoints, so that it runs only for rows that have one: left on
     -- the new rows alone, it was planned before the joins, as a hash of
     -- every delivered row of the history.
     WHERE NOT (n.status = 'sent' AND w.id IS NOT NULL AND EXISTS (
               SELECT 1 FROM message_history h
                WHERE h.message_id = n.message_id AND h.status = 'delivered')
            AND NOT EXISTS (
               SELECT 1 FROM new_rows x
                WHERE x.message_id = n.message_id AND x.status = 'delivered'))
     -- seq in the lifecycle's order: a send writes queued and dispatching
     -- at the same instant.
     ORDER BY n.message_id, n.at,
              array_position(ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered',
                                   'failed'], n.status);
    RETURN NULL;
END
$$;

--
-- Name: smsdora_iso(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_iso(t timestamp with time zone) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"')
$$;

--
-- Name: smsdora_key_added(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_key_added() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('smsdora_key_added', NEW.prefix);
    RETURN NULL;
END
$$;

--
-- Name: smsdora_key_changed(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.smsdora_key_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(OLD) - 'last_used_at' = to_jsonb(NEW) - 'last_used_at' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('smsdora_key_changed', OLD.id::text);
    RETURN NULL;
END
$$;

--
-- Name: account_usage; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.account_usage (
    account_id uuid NOT NULL,
    month date NOT NULL,
    stripe smallint NOT NULL,
    used integer NOT NULL,
    cap integer NOT NULL,
    sized_for integer NOT NULL,
    CONSTRAINT account_usage_used_check CHECK ((used >= 0))
)
WITH (fillfactor='50');

--
-- Name: accounts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.accounts (
    id uuid NOT NULL,
    email text NOT NULL,
    password_hash text,
    plan text DEFAULT 'default'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    name text DEFAULT ''::text NOT NULL,
    prefix text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes text[] NOT NULL,
    rate_limit integer,
    expires_at timestamp with time zone,
    revoked boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone
);

--
-- Name: idempotency_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.idempotency_keys (
    account_id uuid NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    message_id uuid NOT NULL,
    response bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: inbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbox (
    seq bigint NOT NULL,
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    device_id uuid NOT NULL,
    phone_id text NOT NULL,
    sender text NOT NULL,
    body text NOT NULL,
    sim integer,
    received_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: inbox_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.inbox_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: inbox_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.inbox_seq_seq OWNED BY public.inbox.seq;

--
-- Name: message_history; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.message_history (
    message_id uuid NOT NULL,
    status text NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    device_id uuid,
    error text
);

--
-- Name: messages; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.messages (
    seq bigint NOT NULL,
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    device_id uuid,
    recipient text NOT NULL,
    body text NOT NULL,
    status text NOT NULL,
    error text,
    expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    listed_at timestamp with time zone,
    handback text,
    CONSTRAINT messages_handback_check CHECK ((handback = ANY (ARRAY['requested'::text, 'released'::text]))),
    CONSTRAINT messages_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'dispatching'::text, 'sending'::text, 'sent'::text, 'delivered'::text, 'failed'::text])))
);

--
-- Name: messages_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.messages_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: messages_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.messages_seq_seq OWNED BY public.messages.seq;

--
-- Name: nodes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.nodes (
    name text NOT NULL,
    epoch uuid NOT NULL,
    lease_until timestamp with time zone NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    address text,
    process text
);

--
-- Name: pairing_codes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.pairing_codes (
    code_hash bytea NOT NULL,
    account_id uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: plans; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.plans (
    name text NOT NULL,
    monthly_messages integer NOT NULL,
    max_devices integer NOT NULL
);

--
-- Name: presence; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.presence (
    device_id uuid NOT NULL,
    node text NOT NULL,
    epoch uuid NOT NULL,
    connected_at timestamp with time zone NOT NULL,
    last_seen_at timestamp with time zone NOT NULL
);

--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sessions (
    token_hash bytea NOT NULL,
    account_id uuid NOT NULL,
    csrf text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    seen_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: webhook_attempts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_attempts (
    event_seq bigint NOT NULL,
    attempt integer NOT NULL,
    webhook_id uuid NOT NULL,
    status_code integer,
    error text,
    at timestamp with time zone NOT NULL,
    next_retry_at timestamp with time zone
);

--
-- Name: webhook_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_events (
    seq bigint NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    webhook_id uuid NOT NULL,
    account_id uuid NOT NULL,
    type text NOT NULL,
    message_id uuid,
    data jsonb NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    tried integer DEFAULT 0 NOT NULL,
    next_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    done_at timestamp with time zone,
    claimed_by text,
    CONSTRAINT webhook_events_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'delivered'::text, 'failed'::text])))
);

--
-- Name: webhook_events_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.webhook_events_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: webhook_events_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.webhook_events_seq_seq OWNED BY public.webhook_events.seq;

--
-- Name: webhooks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhooks (
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    url text NOT NULL,
    events text[] NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    secret text NOT NULL,
    previous_secret text,
    previous_until timestamp with time zone,
    enabled boolean DEFAULT true NOT NULL,
    disabled_reason text,
    failing_since timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: inbox seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox ALTER COLUMN seq SET DEFAULT nextval('public.inbox_seq_seq'::regclass);

--
-- Name: messages seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages ALTER COLUMN seq SET DEFAULT nextval('public.messages_seq_seq'::regclass);

--
-- Name: webhook_events seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events ALTER COLUMN seq SET DEFAULT nextval('public.webhook_events_seq_seq'::regclass);

--
-- Name: account_usage account_usage_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.account_usage
    ADD CONSTRAINT account_usage_pkey PRIMARY KEY (account_id, month, stripe);

--
-- Name: accounts accounts_email_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.accounts
    ADD CONSTRAINT accounts_email_key UNIQUE (email);

--
-- Name: accounts accounts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);

--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

--
-- Name: api_keys api_keys_prefix_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_prefix_key UNIQUE (prefix);

--
-- Name: devices devices_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.devices
    ADD CONSTRAINT devices_pkey PRIMARY KEY (id);

--
-- Name: devices devices_token_prefix_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.devices
    ADD CONSTRAINT devices_token_prefix_key UNIQUE (token_prefix);

--
-- Name: idempotency_keys idempotency_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (account_id, key);

--
-- Name: inbox inbox_device_id_phone_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT inbox_device_id_phone_id_key UNIQUE (device_id, phone_id);

--
-- Name: inbox inbox_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT inbox_id_key UNIQUE (id);

--
-- Name: inbox inbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT inbox_pkey PRIMARY KEY (seq);

--
-- Name: message_history message_history_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.message_history
    ADD CONSTRAINT message_history_pkey PRIMARY KEY (message_id, status);

--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);

--
-- Name: messages messages_seq_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_seq_key UNIQUE (seq);

--
-- Name: nodes nodes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.nodes
    ADD CONSTRAINT nodes_pkey PRIMARY KEY (name);

--
-- Name: pairing_codes pairing_codes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.pairing_codes
    ADD CONSTRAINT pairing_codes_pkey PRIMARY KEY (code_hash);

--
-- Name: plans plans_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.plans
    ADD CONSTRAINT plans_pkey PRIMARY KEY (name);

--
-- Name: presence presence_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.presence
    ADD CONSTRAINT presence_pkey PRIMARY KEY (device_id);

--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

--
-- Name: sessions sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token_hash);

--
-- Name: webhook_attempts webhook_attempts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_attempts
    ADD CONSTRAINT webhook_attempts_pkey PRIMARY KEY (event_seq, attempt);

--
-- Name: webhook_events webhook_events_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_id_key UNIQUE (id);

--
-- Name: webhook_events webhook_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_pkey PRIMARY KEY (seq);

--
-- Name: webhooks webhooks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (id);

--
-- Name: api_keys_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_keys_account ON public.api_keys USING btree (account_id);

--
-- Name: devices_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX devices_account ON public.devices USING btree (account_id);

--
-- Name: idempotency_keys_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idempotency_keys_created ON public.idempotency_keys USING btree (created_at);

--
-- Name: inbox_account_sender_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX inbox_account_sender_seq ON public.inbox USING btree (account_id, sender, seq DESC);

--
-- Name: inbox_account_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX inbox_account_seq ON public.inbox USING btree (account_id, seq DESC);

--
-- Name: messages_account_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_account_created ON public.messages USING btree (account_id, created_at);

--
-- Name: messages_account_recipient_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_account_recipient_seq ON public.messages USING btree (account_id, recipient, seq DESC);

--
-- Name: messages_account_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_account_seq ON public.messages USING btree (account_id, seq DESC);

--
-- Name: messages_account_status_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_account_status_seq ON public.messages USING btree (account_id, status, seq DESC);

--
-- Name: messages_device_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_device_seq ON public.messages USING btree (device_id, seq DESC);

--
-- Name: messages_expiring; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_expiring ON public.messages USING btree (expires_at) WHERE ((status = ANY (ARRAY['queued'::text, 'dispatching'::text])) AND (expires_at IS NOT NULL));

--
-- Name: messages_listed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_listed ON public.messages USING btree (listed_at) WHERE ((status = 'dispatching'::text) AND (listed_at IS NOT NULL));

--
-- Name: messages_open_by_device; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_open_by_device ON public.messages USING btree (device_id, seq) WHERE (status = ANY (ARRAY['queued'::text, 'dispatching'::text, 'sending'::text, 'sent'::text]));

--
-- Name: messages_released; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_released ON public.messages USING btree (account_id, seq) WHERE ((status = 'dispatching'::text) AND (handback = 'released'::text));

--
-- Name: messages_unacked; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_unacked ON public.messages USING btree (updated_at) WHERE (status = 'dispatching'::text);

--
-- Name: messages_unreported; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX messages_unreported ON public.messages USING btree (updated_at) WHERE (status = 'sending'::text);

--
-- Name: pairing_codes_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX pairing_codes_account ON public.pairing_codes USING btree (account_id);

--
-- Name: presence_by_node; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX presence_by_node ON public.presence USING btree (node, epoch);

--
-- Name: sessions_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_account ON public.sessions USING btree (account_id);

--
-- Name: sessions_expires; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_expires ON public.sessions USING btree (expires_at);

--
-- Name: webhook_attempts_by_webhook; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_attempts_by_webhook ON public.webhook_attempts USING btree (webhook_id, at DESC, event_seq DESC);

--
-- Name: webhook_events_done; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_done ON public.webhook_events USING btree (done_at) WHERE (state <> 'pending'::text);

--
-- Name: webhook_events_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_due ON public.webhook_events USING btree (next_at) WHERE (state = 'pending'::text);

--
-- Name: webhook_events_failed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_failed ON public.webhook_events USING btree (webhook_id, done_at) WHERE (state = 'failed'::text);

--
-- Name: webhook_events_owed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_owed ON public.webhook_events USING btree (webhook_id, message_id, seq) WHERE ((state = 'pending'::text) AND (message_id IS NOT NULL));

--
-- Name: webhooks_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhooks_account ON public.webhooks USING btree (account_id, created_at);

--
-- Name: webhooks_account_enabled; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhooks_account_enabled ON public.webhooks USING btree (account_id) WHERE enabled;

--
-- Name: api_keys api_keys_added; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_added AFTER INSERT OR UPDATE OF prefix ON public.api_keys FOR EACH ROW EXECUTE FUNCTION public.smsdora_key_added();

--
-- Name: api_keys api_keys_changed; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_changed AFTER DELETE OR UPDATE ON public.api_keys FOR EACH ROW EXECUTE FUNCTION public.smsdora_key_changed();

--
-- Name: message_history message_history_events; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER message_history_events AFTER INSERT ON public.message_history REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.smsdora_history_events();

--
-- Name: account_usage account_usage_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.account_usage
    ADD CONSTRAINT account_usage_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: accounts accounts_plan_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.accounts
    ADD CONSTRAINT accounts_plan_fkey FOREIGN KEY (plan) REFERENCES public.plans(name);

--
-- Name: api_keys api_keys_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: devices devices_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.devices
    ADD CONSTRAINT devices_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: idempotency_keys idempotency_keys_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: inbox inbox_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT inbox_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: message_history message_history_message_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.message_history
    ADD CONSTRAINT message_history_message_id_fkey FOREIGN KEY (message_id) REFERENCES public.messages(id) ON DELETE CASCADE;

--
-- Name: messages messages_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: messages messages_device_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_device_id_fkey FOREIGN KEY (device_id) REFERENCES public.devices(id);

--
-- Name: pairing_codes pairing_codes_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.pairing_codes
    ADD CONSTRAINT pairing_codes_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: sessions sessions_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;

--
-- Name: webhook_attempts webhook_attempts_event_seq_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_attempts
    ADD CONSTRAINT webhook_attempts_event_seq_fkey FOREIGN KEY (event_seq) REFERENCES public.webhook_events(seq) ON DELETE CASCADE;

--
-- Name: webhook_events webhook_events_webhook_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_webhook_id_fkey FOREIGN KEY (webhook_id) REFERENCES public.webhooks(id) ON DELETE CASCADE;

--
-- Name: webhooks webhooks_account_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id) ON DELETE CASCADE;
