"""Two threads racing one conditional write: exactly one wins, as on DynamoDB."""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import ClientError

from tests.helpers import create_table_from_template


def race(table: Any, job_id: str, workers: int = 4) -> list[int]:
    """``workers`` threads each try to take a free lease at once; the ones that got it."""
    table.put_item(Item={"job_id": job_id, "lease": 0})
    wins: list[int] = []
    barrier = threading.Barrier(workers)

    def take(worker: int) -> None:
        barrier.wait()
        try:
            table.update_item(Key={"job_id": job_id}, UpdateExpression="SET lease = :mine",
                              ConditionExpression="lease = :free",
                              ExpressionAttributeValues={":mine": worker, ":free": 0})  # fmt: skip
            wins.append(worker)
        except ClientError:
            pass

    threads = [threading.Thread(target=take, args=(worker,)) for worker in range(1, workers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wins


def test_concurrent_conditional_writes_on_one_item_let_exactly_one_through(moto_clients):
    create_table_from_template(moto_clients.get("dynamodb"), "JobsTable", "jobs")
    table = moto_clients.get_resource("dynamodb").Table("jobs")
    assert [len(race(table, f"j-{n}")) for n in range(20)] == [1] * 20


def test_concurrent_updates_of_one_item_never_fail_mid_copy(moto_clients):
    """moto copies the live item before an update; another thread's update adding attributes
    during that copy made it fail ("dictionary changed size during iteration")."""
    create_table_from_template(moto_clients.get("dynamodb"), "JobsTable", "jobs")
    table = moto_clients.get_resource("dynamodb").Table("jobs")
    table.put_item(Item={"job_id": "j-1", **{f"field_{i}": list(range(10)) for i in range(40)}})
    errors: list[Exception] = []

    def update(worker: int) -> None:
        for round_ in range(15):
            try:
                table.update_item(Key={"job_id": "j-1"}, UpdateExpression="SET #f = :v",
                                  ExpressionAttributeNames={"#f": f"w{worker}_{round_}"},
                                  ExpressionAttributeValues={":v": round_}, ReturnValues="ALL_NEW")  # fmt: skip
            except Exception as exc:  # any failure is the bug
                errors.append(exc)

    threads = [threading.Thread(target=update, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(table.get_item(Key={"job_id": "j-1"})["Item"]) == 1 + 40 + 4 * 15


def test_reads_racing_updates_of_one_item_always_answer(moto_clients):
    """GetItem and Query serialise the live item into their answer; an update adding attributes
    meanwhile made them fail the same way (a GetItem 500 in CI while a fetch ran)."""
    create_table_from_template(moto_clients.get("dynamodb"), "JobsTable", "jobs")
    table = moto_clients.get_resource("dynamodb").Table("jobs")
    table.put_item(Item={"job_id": "j-1", **{f"field_{i}": {"nested": list(range(20))} for i in range(40)}})
    errors: list[Exception] = []
    done = threading.Event()

    def write() -> None:
        for round_ in range(60):
            if done.is_set():
                return
            table.update_item(Key={"job_id": "j-1"}, UpdateExpression="SET #f = :v",
                              ExpressionAttributeNames={"#f": f"added_{round_}"},
                              ExpressionAttributeValues={":v": {"n": list(range(20))}})  # fmt: skip
        done.set()

    def read() -> None:
        while not done.is_set():
            try:
                table.get_item(Key={"job_id": "j-1"})
                table.scan()
            except Exception as exc:  # any failure is the bug
                errors.append(exc)
                done.set()

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(table.get_item(Key={"job_id": "j-1"})["Item"]) == 1 + 40 + 60
