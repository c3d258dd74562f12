"""The worker side of the change engine: submit queued items within AWS's rate limits, follow
pending ones until AWS reports ``applied``, and sweep up work that a dead broker or worker left.

- ``runner``: ``run_region`` works through one account/region's queue — claim an item (a
  conditional UPDATE, queued -> submitting), take its action's token, preflight the region once per
  batch with DryRun, call AWS, record the answer. One runner per account/region at a time
  (``locks.RegionLock``); account/regions run in parallel.
- ``tracking``: rounds of batched DescribeInstances that move pending items to applied, stuck or
  failed, and follow the ones waiting for a stopped instance to start.
- ``sweep``: returns items a dead worker left in submitting, and finds queued regions no runner has.
- ``targets``: one object per kind of change (instance options, account defaults, launch template,
  enforcement) with its AWS action, call, record and rollback. The runner, tracker, sweeper and
  rollback ask the target; none of them branches on the kind.

Item state transitions (claim, finish, requeue, fail region) are methods of ``ChangeItem`` and its
queryset (fleet.models.changes). ``fleet.tasks`` wraps these functions as Celery tasks.
"""
