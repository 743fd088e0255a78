"""Upload purging on S3 also aborts multipart uploads that no session names any more."""

from __future__ import annotations

import time

from s3_support import open_s3_driver

from registry.storage.purge import purge_uploads
from registry.storage.store import Storage


async def test_purge_aborts_orphaned_multipart_uploads():
    async with open_s3_driver() as driver:
        orphan_key = driver._key("/docker/registry/v2/repositories/x/_uploads/0000/data")
        upload_id = await driver.api.create_multipart(orphan_key)
        assert upload_id
        st = Storage(driver)
        # every session older than "now + 1 h", i.e. all of them (moto dates uploads in 2010)
        report = await purge_uploads(driver, st.uploads, time.time() + 3600)
        assert report.backend_aborted >= 1, report
        assert await driver.purge_multipart_uploads(0) == 0  # nothing left to abort
