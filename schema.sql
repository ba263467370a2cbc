-- The geowh warehouse: the one place its tables, columns and their meaning are written.
--
-- The file is a list of numbered migrations. Each block starts with a line
--     -- migration N: title
-- and runs once, in order, in its own transaction; `schema_migrations` records it. A fresh
-- warehouse runs them all; an older one runs those it lacks; a newer one is refused. Blocks
-- are never edited once released: a change is a new block at the end.
--
-- Rows are tidy and long: a metric name is a value, not a column. Natural keys (model name,
-- checkpoint label, probe id) keep hand-written SQL short. Every result row names the run
-- (`runs.run_id`) that produced it, and the run holds the provenance: config, versions, device.
-- The `-- ` comment after a column is its documentation; `geowh` copies it into DuckDB's
-- catalogue (COMMENT ON COLUMN), so `duckdb_columns()` shows it too.

-- migration 1: core trajectories

CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,  -- migration number, as in schema.sql
    title       TEXT NOT NULL,        -- the migration's title line
    applied_at  TIMESTAMP NOT NULL    -- when this warehouse ran it (UTC)
);

CREATE TABLE IF NOT EXISTS models (
    model       TEXT PRIMARY KEY,  -- short name used everywhere: pythia-410m, olmo-2-7b, my-run
    family      TEXT,              -- registry family: pythia, olmo-2, tulu-3, hf, local, imported
    hub_repo    TEXT,              -- Hugging Face repo id of the base series; NULL for local runs
    parameters  BIGINT,            -- number of parameters; NULL when not known
    layers      INTEGER,           -- number of transformer blocks
    d_model     INTEGER,           -- width of the hidden states (the feature dimension d)
    vocab_size  INTEGER,           -- size of the output vocabulary |V|
    tokenizer   TEXT               -- tokenizer the model was probed with (hub id or local path)
);

CREATE TABLE IF NOT EXISTS checkpoints (
    model        TEXT NOT NULL,  -- models.model
    checkpoint   TEXT NOT NULL,  -- label: hub revision (step1000, stage1-step1000-tokens5B) or folder name
    step         BIGINT,         -- optimizer step within its stage; NULL when not known
    tokens       DOUBLE,         -- training tokens seen at this checkpoint; NULL when not known
    stage        TEXT,           -- training stage: pretrain, mid, sft, dpo, rlvr
    stage_order  INTEGER,        -- position of the stage in the series (pretrain 0, mid 1, sft 2, dpo 3, rlvr 4)
    source       TEXT,           -- where the weights come from: hf://repo@revision, file:///path, or live (measured during training by geowh.integrations, not saved)
    PRIMARY KEY (model, checkpoint)
);

CREATE TABLE IF NOT EXISTS probes (
    probe         TEXT PRIMARY KEY,  -- identity: name and the first 12 hex digits of content_hash
    name          TEXT NOT NULL,     -- registry name (fineweb, wikitext) or the local file it came from
    dataset       TEXT,              -- hub dataset id or local path
    config        TEXT,              -- dataset configuration (sample-10BT)
    split         TEXT,              -- dataset split (train, validation)
    sequences     INTEGER,           -- number of sequences used (M)
    max_len       INTEGER,           -- sequences are truncated to this many tokens
    min_len       INTEGER,           -- texts of this many tokens or fewer are dropped
    seed          BIGINT,            -- seed of the deterministic sample
    tokenizer     TEXT,              -- tokenizer that produced the token counts
    content_hash  TEXT NOT NULL      -- sha256 over the texts, the tokenizer and the length settings
);

CREATE TABLE IF NOT EXISTS runs (
    run_id                TEXT PRIMARY KEY,  -- uuid of one attempt
    kind                  TEXT NOT NULL,     -- what was computed: geometry, memorization, import
    model                 TEXT NOT NULL,     -- models.model
    checkpoint            TEXT,              -- checkpoints.checkpoint; NULL for whole-model imports
    probe                 TEXT,              -- probes.probe (or the QA task for memorization runs)
    config_key            TEXT,              -- hash of the config: a rerun with the same key is skipped once ok
    config                JSON,              -- every setting of the attempt (layers, pooling, batch size, ...)
    status                TEXT NOT NULL,     -- running, ok or failed
    error                 TEXT,              -- why a failed attempt failed; NULL otherwise
    geowh_version         TEXT,              -- geowh version that ran it
    torch_version         TEXT,              -- torch version; NULL when torch was not used
    transformers_version  TEXT,              -- transformers version; NULL when not used
    device                TEXT,              -- cpu, cuda:0 (NVIDIA H100 80GB HBM3), ...
    dtype                 TEXT,              -- dtype of the forward pass: float32, bfloat16, float16
    started_at            TIMESTAMP,         -- start (UTC)
    finished_at           TIMESTAMP,         -- end (UTC); NULL while running
    stage_seconds         JSON               -- seconds spent per stage: {"load": s, "forward": s, "metrics": s}
);

CREATE TABLE IF NOT EXISTS spectra (
    model        TEXT NOT NULL,     -- models.model
    checkpoint   TEXT NOT NULL,     -- checkpoints.checkpoint
    probe        TEXT NOT NULL,     -- probes.probe
    layer        INTEGER NOT NULL,  -- hidden_states index: 0 = embeddings, `layers` = last block (after the final norm)
    pooling      TEXT NOT NULL,     -- last (last real token) or mean (over real tokens)
    n_samples    BIGINT NOT NULL,   -- rows of the feature matrix (M)
    d            INTEGER NOT NULL,  -- columns of the feature matrix
    eigenvalues  DOUBLE[] NOT NULL, -- covariance eigenvalues, largest first, full spectrum, unnormalised
    run_id       TEXT NOT NULL      -- runs.run_id
);

CREATE TABLE IF NOT EXISTS metrics (
    model       TEXT NOT NULL,  -- models.model
    checkpoint  TEXT NOT NULL,  -- checkpoints.checkpoint
    probe       TEXT,           -- probes.probe; NULL for imported values that name none
    layer       INTEGER,        -- as spectra.layer; NULL for imported values that name none
    pooling     TEXT,           -- as spectra.pooling; NULL for imported values that name none
    metric      TEXT NOT NULL,  -- registry name: rankme, rankme_sv, alpha_req, alpha_req_r2, ...
    value       DOUBLE,         -- the value; NaN when it cannot be computed (params.reason says why)
    stderr      DOUBLE,         -- standard error over probe subsets; NULL without --subsets
    params      JSON,           -- how it was computed: eps, max_components, fit range, subsets, ...
    run_id      TEXT            -- runs.run_id
);

-- One row per (model, checkpoint, probe, layer, pooling) with a column per metric. geowh
-- rebuilds this view when a metric it has not seen before is written, so every metric in
-- `metrics` has its column.
CREATE OR REPLACE VIEW trajectories AS
SELECT c.model, m.checkpoint, c.stage, c.stage_order, c.step, c.tokens, m.probe, m.layer, m.pooling,
       max(m.value) FILTER (WHERE m.metric = 'rankme') AS rankme,
       max(m.value) FILTER (WHERE m.metric = 'alpha_req') AS alpha_req
FROM metrics m JOIN checkpoints c USING (model, checkpoint)
GROUP BY ALL;

-- migration 2: evals and phases

CREATE TABLE IF NOT EXISTS evals (
    model            TEXT NOT NULL,     -- models.model
    checkpoint       TEXT NOT NULL,     -- checkpoints.checkpoint (step{N} when the file names a step only)
    step             BIGINT,            -- optimizer step of the checkpoint; NULL when the file names none
    task             TEXT NOT NULL,     -- lm-eval-harness task: sciq, lambada_openai, arc_easy, ...
    metric           TEXT NOT NULL,     -- metric without its filter suffix: acc, acc_norm, ppl, word_perplexity, ...
    filter           TEXT NOT NULL,     -- lm-eval filter of the metric (`none` in `acc,none`); 'none' for the old format
    num_fewshot      INTEGER NOT NULL,  -- few-shot examples in the prompt (0 = zero-shot)
    value            DOUBLE,            -- the score as the harness wrote it (accuracy in [0, 1], perplexity, ...)
    stderr           DOUBLE,            -- the harness's standard error of the value; NULL when absent
    source_file      TEXT,              -- absolute path of the results file it was read from
    harness_format   TEXT,              -- results-file layout: old (results/versions/config) or new (results_<date>.json)
    harness_version  TEXT,              -- lm-eval version or git hash named in the file; NULL when absent
    imported_at      TIMESTAMP,         -- when geowh imported the row (UTC)
    run_id           TEXT               -- runs.run_id of the import
);

CREATE TABLE IF NOT EXISTS phases (
    model           TEXT NOT NULL,     -- models.model
    probe           TEXT,              -- probes.probe of the trajectory segmented; NULL when its metrics name none
    layer           INTEGER,           -- hidden_states index of the trajectory segmented; NULL when its metrics name none
    pooling         TEXT,              -- pooling of the trajectory segmented; NULL when its metrics name none
    basis           TEXT NOT NULL,     -- metric(s) the change points were found on: rankme, alpha_req or both
    phase_index     INTEGER NOT NULL,  -- position of the phase in the series, from 0
    phase           TEXT NOT NULL,     -- label: warmup, entropy-seeking, compression-seeking
    stage           TEXT,              -- checkpoints.stage of the phase (pretrain, sft, dpo, rlvr, ...)
    matches_paper   BOOLEAN,           -- post-training stages: does the direction match METHOD.md (SFT/DPO entropy, RLVR compression); NULL otherwise
    start_step      BIGINT,            -- step of the first checkpoint of the phase
    end_step        BIGINT,            -- step of the last checkpoint of the phase
    start_tokens    DOUBLE,            -- training tokens at the first checkpoint; NULL when not known
    end_tokens      DOUBLE,            -- training tokens at the last checkpoint; NULL when not known
    delta_rankme    DOUBLE,            -- change of the smoothed RankMe from start to end of the phase
    delta_alpha_req DOUBLE,            -- change of the smoothed alpha-ReQ from start to end of the phase
    evidence        JSON,              -- why the label: relative changes, slopes, number of checkpoints, expected direction
    method          TEXT NOT NULL,     -- segmentation method and version, e.g. slope-sign-v1
    params          JSON,              -- the method's parameters: smoothing window, min segment, min change, x axis
    computed_at     TIMESTAMP          -- when the phases were computed (UTC)
);

-- migration 3: memorization

CREATE TABLE IF NOT EXISTS indexes (
    index_dir    TEXT PRIMARY KEY,  -- absolute path of the infini-gram index folder
    tokenizer    TEXT NOT NULL,     -- tokenizer the corpus was tokenized with (hub id or local path)
    token_dtype  TEXT,              -- u16 or u32: width of the stored token ids
    shards       INTEGER,           -- number of shards (tokenized.N, table.N, offset.N)
    documents    BIGINT,            -- documents indexed
    tokens       BIGINT,            -- tokens indexed, document separators not counted
    seconds      DOUBLE,            -- wall-clock seconds of the build; 0 for an index built elsewhere
    built_at     TIMESTAMP,         -- when the index was built (UTC); NULL when not known
    meta         JSON               -- the index's geowh-index.json: sources, vocab size, eos id, format version
);

CREATE TABLE IF NOT EXISTS infgram_items (
    index_dir      TEXT NOT NULL,     -- indexes.index_dir
    task           TEXT NOT NULL,     -- QA task: triviaqa, or a local .jsonl as {stem}-{first 12 hex of its sha256}
    item           TEXT NOT NULL,     -- item id within the task (TriviaQA question_id; line number for a file without ids)
    question       TEXT,              -- the question as given
    answer         TEXT,              -- the answer scored: the target y
    answer_tokens  INTEGER,           -- answer tokens in the index's tokenizer
    zero_tokens    INTEGER,           -- answer tokens with P∞ = 0, dropped from log_p_inf (authors' rule)
    probs          DOUBLE[],          -- P∞ of each answer token given the prompt and the answer tokens before it
    suffix_lens    INTEGER[],         -- suffix length the ∞-gram used for each answer token (0 = unigram)
    log_p_inf      DOUBLE,            -- sum of log P∞ over the answer tokens with P∞ > 0; NULL when excluded
    excluded       TEXT,              -- why the item is left out of the correlation (every answer token has P∞ = 0); NULL when used
    computed_at    TIMESTAMP          -- when it was computed (UTC)
);

CREATE TABLE IF NOT EXISTS memorization_items (
    model          TEXT NOT NULL,  -- models.model
    checkpoint     TEXT NOT NULL,  -- checkpoints.checkpoint
    task           TEXT NOT NULL,  -- as infgram_items.task
    item           TEXT NOT NULL,  -- as infgram_items.item
    answer_tokens  INTEGER,        -- answer tokens in the model's tokenizer
    log_p_model    DOUBLE,         -- sum of log P_model(answer token | prompt and the answer tokens before it)
    run_id         TEXT            -- runs.run_id
);

-- migration 4: who runs a run
-- A `running` row whose process is gone (kill -9, a lost machine) is stale: `geowh info` counts
-- it as interrupted and the next ingest of the model marks it so. Status `interrupted` (Ctrl-C,
-- SIGTERM) joins running, ok and failed.

ALTER TABLE runs ADD COLUMN IF NOT EXISTS host TEXT;  -- hostname of the machine that ran it; NULL for runs before migration 4
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;  -- process id that ran it on `host`; a running row whose process is gone is stale
COMMENT ON COLUMN runs.status IS 'running, ok, failed or interrupted (Ctrl-C, SIGTERM, or a stale running row whose process is gone)';

-- migration 5: memorization keyed by its index; complete provenance
-- A memorization score reads the LM head against one infini-gram index: `metrics.index_dir`
-- names the index, so scores of one task against two indexes are both kept. Such rows leave
-- `trajectories` (one row per checkpoint, probe, layer and pooling of the geometry) and are
-- read through the `memorization` view.

ALTER TABLE metrics ADD COLUMN IF NOT EXISTS index_dir TEXT;  -- indexes.index_dir of a memorization score; NULL for geometry and imported metrics
UPDATE metrics SET index_dir = json_extract_string(params, '$.index')
WHERE metric LIKE 'memorization_spearman%' AND index_dir IS NULL;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS hub_commit TEXT;  -- git commit the hub resolved the checkpoint's revision to; NULL for local folders, live and imported runs
ALTER TABLE runs ADD COLUMN IF NOT EXISTS numpy_version TEXT;  -- numpy version; NULL for runs before migration 5
ALTER TABLE runs ADD COLUMN IF NOT EXISTS scipy_version TEXT;  -- scipy version; NULL when not installed or for runs before migration 5
ALTER TABLE runs ADD COLUMN IF NOT EXISTS infini_gram_version TEXT;  -- infini-gram version; NULL when not installed or for runs before migration 5

CREATE OR REPLACE VIEW trajectories AS
SELECT c.model, m.checkpoint, c.stage, c.stage_order, c.step, c.tokens, m.probe, m.layer, m.pooling,
       max(m.value) FILTER (WHERE m.metric = 'rankme') AS rankme,
       max(m.value) FILTER (WHERE m.metric = 'alpha_req') AS alpha_req
FROM metrics m JOIN checkpoints c USING (model, checkpoint)
WHERE m.index_dir IS NULL
GROUP BY ALL;

-- One row per memorization score: a checkpoint's task scored against an index.
CREATE OR REPLACE VIEW memorization AS
SELECT m.model, m.checkpoint, c.stage, c.step, c.tokens, m.probe AS task, m.index_dir AS "index", m.metric,
       m.value, (m.params ->> '$.n')::INTEGER AS n, m.params, m.run_id
FROM metrics m JOIN checkpoints c USING (model, checkpoint)
WHERE m.index_dir IS NOT NULL;

-- migration 6: results keyed by their definitions; where a series comes from; table keys
-- A geometry run records the fingerprint of the metric definitions it measured with (the
-- registry's names, outputs, defaults and versions), which is also part of its config key: a
-- re-ingest after a definition changed measures again instead of skipping. The git commit of
-- the code is recorded but not keyed (a commit that changes no definition changes no number).
-- A series records its source, and each local checkpoint the fingerprint of its weights, so that
-- another run cannot be mistaken for one already stored under the same model name.
--
-- `-- key TABLE (COLUMNS)` declares how a row of TABLE is identified when it is written again
-- (`merged`: a dimension table, where a column the new row leaves NULL keeps its old value;
-- otherwise the new row replaces the old one). A new table declares its key in its migration.

ALTER TABLE runs ADD COLUMN IF NOT EXISTS definitions TEXT;  -- fingerprint of the metric definitions (names, outputs, defaults, versions) a geometry or recompute run used; NULL for other kinds and for runs before migration 6
ALTER TABLE runs ADD COLUMN IF NOT EXISTS code_commit TEXT;  -- git commit of the geowh checkout that ran it, with -dirty when it had uncommitted changes; NULL when geowh was installed from a package
ALTER TABLE models ADD COLUMN IF NOT EXISTS source TEXT;  -- where the series comes from: hf://repo or file:///folder (resolved); another source under the same model name is refused
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS fingerprint TEXT;  -- content of the weights: sha256 over the safetensors headers (local folders) or the hub commit; NULL when not known

-- key models (model) merged
-- key checkpoints (model, checkpoint) merged
-- key probes (probe) merged
-- key runs (run_id)
-- key spectra (model, checkpoint, probe, layer, pooling)
-- key metrics (model, checkpoint, probe, layer, pooling, index_dir, metric)
-- key evals (model, checkpoint, task, metric, filter, num_fewshot)
-- key phases (model, probe, layer, pooling, basis, phase_index)
-- key indexes (index_dir)
-- key infgram_items (index_dir, task, item)
-- key memorization_items (model, checkpoint, task, item)

-- migration 7: fit diagnostics and the FLOPs axis
-- Every αReQ value with the quality of its power-law fit, and the rule that flags it:
--   no fit  the value is NaN (too few positive eigenvalues: metrics.params.reason says why);
--   short   fewer than 20 eigenvalues entered the fit (a spectrum narrower than the fit range);
--   poor    R² of the fitted line below 0.9 over the R² range, or R² undefined;
--   ok      otherwise; NULL when neither R² nor the fit range is known (an import that names neither).
-- `trajectories` shows the flag of its `alpha_req` as the column `alpha_req_fit`.

ALTER TABLE phases ADD COLUMN IF NOT EXISTS start_flops DOUBLE;  -- training FLOPs (6 · models.parameters · tokens) at the first checkpoint; NULL when parameters or tokens are unknown
ALTER TABLE phases ADD COLUMN IF NOT EXISTS end_flops DOUBLE;  -- training FLOPs at the last checkpoint; NULL when parameters or tokens are unknown

-- One row per αReQ value (alpha_req, and the variants `geowh recompute` adds as alpha_req@…):
-- model, checkpoint, step, tokens, probe, layer, pooling, metric, alpha_req, r2 (the partner
-- alpha_req_r2 value), fit_start and fit_end (1-based ranks actually fitted), n_fit_points
-- (eigenvalues used), n_zero_excluded, r2_start and r2_end (ranks of the R² range) and flag.
CREATE OR REPLACE VIEW alpha_req_fits AS
SELECT a.model, a.checkpoint, c.step, c.tokens, a.probe, a.layer, a.pooling, a.metric,
       a.value AS alpha_req,
       r.value AS r2,
       (a.params -> '$.fit_range' ->> 0)::INTEGER AS fit_start,
       (a.params -> '$.fit_range' ->> 1)::INTEGER AS fit_end,
       (a.params ->> '$.n_fit_points')::INTEGER AS n_fit_points,
       (a.params ->> '$.n_zero_excluded')::INTEGER AS n_zero_excluded,
       (a.params -> '$.r2_range' ->> 0)::INTEGER AS r2_start,
       (a.params -> '$.r2_range' ->> 1)::INTEGER AS r2_end,
       CASE
           WHEN a.value IS NULL OR isnan(a.value) THEN 'no fit'
           WHEN (a.params ->> '$.n_fit_points')::INTEGER < 20 THEN 'short'
           WHEN r.value IS NOT NULL AND (isnan(r.value) OR r.value < 0.9) THEN 'poor'
           WHEN r.value IS NOT NULL THEN 'ok'
           WHEN (a.params ->> '$.n_fit_points') IS NOT NULL THEN 'poor'
       END AS flag
FROM metrics a
JOIN checkpoints c USING (model, checkpoint)
LEFT JOIN metrics r
       ON r.model = a.model AND r.checkpoint = a.checkpoint AND r.probe IS NOT DISTINCT FROM a.probe
      AND r.layer IS NOT DISTINCT FROM a.layer AND r.pooling IS NOT DISTINCT FROM a.pooling
      AND r.index_dir IS NULL AND r.metric = 'alpha_req_r2' || substr(a.metric, 10)
WHERE a.index_dir IS NULL AND (a.metric = 'alpha_req' OR a.metric LIKE 'alpha_req@%');

CREATE OR REPLACE VIEW trajectories AS
SELECT c.model, m.checkpoint, c.stage, c.stage_order, c.step, c.tokens, m.probe, m.layer, m.pooling,
       max(m.value) FILTER (WHERE m.metric = 'rankme') AS rankme,
       max(m.value) FILTER (WHERE m.metric = 'alpha_req') AS alpha_req,
       any_value(f.flag) AS alpha_req_fit
FROM metrics m JOIN checkpoints c USING (model, checkpoint)
LEFT JOIN alpha_req_fits f
       ON f.model = m.model AND f.checkpoint = m.checkpoint AND f.probe IS NOT DISTINCT FROM m.probe
      AND f.layer IS NOT DISTINCT FROM m.layer AND f.pooling IS NOT DISTINCT FROM m.pooling AND f.metric = 'alpha_req'
WHERE m.index_dir IS NULL
GROUP BY ALL;

-- migration 8: the generation measurement
-- `geowh ingest --generate TASK.jsonl` scores each checkpoint's completions (accuracy, pass@k,
-- distinct-n, entropy) as `evals` rows that geowh computed rather than imported, and keeps the
-- per-item counts that any pass@k is recomputed from (docs/posttrain.md).

ALTER TABLE evals ADD COLUMN IF NOT EXISTS source TEXT;  -- who computed the score: geowh (the generation measurement) or lm-eval (an imported harness file)
ALTER TABLE evals ADD COLUMN IF NOT EXISTS params JSON;  -- how geowh computed it: samples, temperature, max_new_tokens, seed, items, k; NULL for imports
UPDATE evals SET source = 'lm-eval' WHERE source IS NULL;

CREATE TABLE IF NOT EXISTS generation_items (
    model           TEXT NOT NULL,  -- models.model
    checkpoint      TEXT NOT NULL,  -- checkpoints.checkpoint
    task            TEXT NOT NULL,  -- evals.task: the task file's name without extension
    item            TEXT NOT NULL,  -- the item's id in the task file (its line number when it has none)
    samples         INTEGER,        -- n: completions sampled for the item
    correct         INTEGER,        -- c: sampled completions its checker accepted (pass@k = 1 - C(n-c,k)/C(n,k))
    greedy_correct  BOOLEAN,        -- whether the greedy completion was accepted (accuracy)
    greedy          TEXT,           -- the greedy completion, decoded
    sampled_tokens  INTEGER,        -- tokens generated over the item's samples (EOS included)
    entropy         DOUBLE,         -- mean entropy (nats) of the sampling distribution over those tokens
    run_id          TEXT            -- runs.run_id
);
-- key generation_items (model, checkpoint, task, item)
