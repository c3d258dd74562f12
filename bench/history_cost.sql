-- The posture history's cost at 3,400 account/regions (200 accounts x 17 regions) x 400 days of
-- retention, hourly buckets kept for the last 7 days: every row the defaults would keep.
-- Run against a migrated, otherwise empty database:  psql -f bench/history_cost.sql
\timing off
INSERT INTO fleet_account (account_id, name, role_arn, external_id, regions, enabled, created_at)
SELECT lpad(n::text, 12, '0'), 'account-' || n, '', '', '[]', true, now() FROM generate_series(1, 200) n;
CREATE TEMP TABLE regions AS SELECT unnest(ARRAY['us-east-1','us-east-2','us-west-1','us-west-2','eu-west-1',
  'eu-west-2','eu-west-3','eu-central-1','eu-north-1','ap-south-1','ap-northeast-1','ap-northeast-2',
  'ap-southeast-1','ap-southeast-2','ca-central-1','sa-east-1','ap-northeast-3']) AS region;
CREATE TEMP TABLE buckets AS
  SELECT date_trunc('hour', now()) - make_interval(hours => h) AS bucket FROM generate_series(0, 7 * 24 - 1) h
  UNION ALL
  SELECT date_trunc('day', now()) - make_interval(days => d) + interval '23 hours' FROM generate_series(8, 400) d;
INSERT INTO fleet_posturesnapshot (account_id, region, bucket, total, enforced, enforced_applied, tokens_required,
  pending, endpoint_disabled, hop_limit_over_1, tags_enabled, stopped, v1_in_use, v1_measured, safe_to_enforce,
  not_enforced_unmeasured, not_enforced_in_use)
SELECT a.id, r.region, b.bucket, 300, 150, 140, 145, 3, 5, 20, 1, 12, 30, 280, 100, 20, 30
FROM fleet_account a CROSS JOIN regions r CROSS JOIN buckets b;
INSERT INTO fleet_fleetsnapshot (bucket, total, enforced, enforced_applied, tokens_required, pending,
  endpoint_disabled, hop_limit_over_1, tags_enabled, stopped, v1_in_use, v1_measured, safe_to_enforce,
  not_enforced_unmeasured, not_enforced_in_use)
SELECT bucket, 1020000, 510000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM buckets;
VACUUM ANALYZE fleet_posturesnapshot;
VACUUM ANALYZE fleet_fleetsnapshot;
SELECT relname, n_live_tup AS rows,
       pg_size_pretty(pg_relation_size(relid)) AS heap,
       pg_size_pretty(pg_indexes_size(relid)) AS indexes,
       pg_size_pretty(pg_total_relation_size(relid)) AS total,
       round(pg_total_relation_size(relid)::numeric / greatest(n_live_tup, 1)) AS bytes_per_row
FROM pg_stat_user_tables WHERE relname IN ('fleet_posturesnapshot', 'fleet_fleetsnapshot') ORDER BY relname;
