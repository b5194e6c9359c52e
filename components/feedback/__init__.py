"""Serving feedback as data: what was shown (impressions) and what shoppers did with it (events).

    records.py   the Impression and FeedbackEvent records, their column names, pure validation of an
                 event against its impression, and the per-unit TokenBucket

Pure: no clocks (times are arguments, unix seconds), no files. artifacts/feedback_store.py keeps the
records (SQLite, or PostgreSQL by HATCHERY_STATE_URL); services/capture.py writes them off the
request path.
"""
