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


def _pairs_table(dynamodb: Any) -> Any:
    """A table with a sort key (the jobs table has none): both kinds of key are rolled back."""
    dynamodb.create_table(
        TableName="pairs",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk")],
        BillingMode="PAY_PER_REQUEST",
    )


def test_a_cancelled_transaction_leaves_every_item_it_named_as_it_was(moto_clients):
    dynamodb = moto_clients.get("dynamodb")
    create_table_from_template(dynamodb, "JobsTable", "jobs")
    _pairs_table(dynamodb)
    jobs = moto_clients.get_resource("dynamodb").Table("jobs")
    pairs = moto_clients.get_resource("dynamodb").Table("pairs")
    jobs.put_item(Item={"job_id": "updated", "status": "QUEUED", "tags": ["a"]})
    jobs.put_item(Item={"job_id": "deleted", "status": "QUEUED"})
    pairs.put_item(Item={"pk": "p", "sk": "1", "n": 1})
    s = lambda v: {"S": v}  # noqa: E731
    writes = [
        {"Update": {"TableName": "jobs", "Key": {"job_id": s("updated")},
                    "UpdateExpression": "SET #s = :r, tags = list_append(tags, :more)",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":r": s("RUNNING"), ":more": {"L": [s("b")]}}}},
        {"Put": {"TableName": "jobs", "Item": {"job_id": s("created"), "status": s("QUEUED")}}},
        {"Delete": {"TableName": "jobs", "Key": {"job_id": s("deleted")}}},
        {"Update": {"TableName": "pairs", "Key": {"pk": s("p"), "sk": s("1")}, "UpdateExpression": "SET n = :two",
                    "ExpressionAttributeValues": {":two": {"N": "2"}}}},
        {"Put": {"TableName": "pairs", "Item": {"pk": s("p"), "sk": s("2")}}},
        {"ConditionCheck": {"TableName": "jobs", "Key": {"job_id": s("missing")},
                            "ConditionExpression": "attribute_exists(job_id)"}},
    ]  # fmt: skip
    try:
        dynamodb.transact_write_items(TransactItems=writes)
    except ClientError as error:
        assert error.response["Error"]["Code"] == "TransactionCanceledException"
    else:
        raise AssertionError("the transaction should have been cancelled")
    assert jobs.get_item(Key={"job_id": "updated"})["Item"] == {"job_id": "updated", "status": "QUEUED", "tags": ["a"]}
    assert "Item" not in jobs.get_item(Key={"job_id": "created"})
    assert jobs.get_item(Key={"job_id": "deleted"})["Item"]["status"] == "QUEUED"
    assert pairs.get_item(Key={"pk": "p", "sk": "1"})["Item"]["n"] == 1
    assert "Item" not in pairs.get_item(Key={"pk": "p", "sk": "2"})
    assert {item["job_id"] for item in jobs.scan()["Items"]} == {"updated", "deleted"}
    # Without the failing check the same writes all land.
    dynamodb.transact_write_items(TransactItems=writes[:-1])
    assert jobs.get_item(Key={"job_id": "updated"})["Item"]["tags"] == ["a", "b"]
    assert {item["job_id"] for item in jobs.scan()["Items"]} == {"updated", "created"}
    assert pairs.get_item(Key={"pk": "p", "sk": "1"})["Item"]["n"] == 2


def test_a_transaction_copies_only_its_own_items_not_the_table(moto_clients, monkeypatch):
    """moto backed up every table a transaction touched, whole: on a long-running local stack
    each job's transaction grew with the jobs table, holding every DynamoDB call behind it."""
    from moto.dynamodb.models.table import Table

    dynamodb = moto_clients.get("dynamodb")
    create_table_from_template(dynamodb, "JobsTable", "jobs")
    jobs = moto_clients.get_resource("dynamodb").Table("jobs")
    with jobs.batch_writer() as batch:
        for n in range(300):
            batch.put_item(Item={"job_id": f"j-{n}", "status": "SUCCEEDED"})

    def whole_table_copied(self: Any, protocol: int) -> Any:
        raise AssertionError("a whole table was copied")

    monkeypatch.setattr(Table, "__reduce_ex__", whole_table_copied)
    condition = {"ConditionExpression": "#s = :queued", "ExpressionAttributeNames": {"#s": "status"}}
    put = {"TableName": "jobs", "Item": {"job_id": {"S": "new"}, "status": {"S": "QUEUED"}}}
    dynamodb.transact_write_items(TransactItems=[{"Put": put}])
    check = {"TableName": "jobs", "Key": {"job_id": {"S": "j-1"}}, **condition,
             "ExpressionAttributeValues": {":queued": {"S": "QUEUED"}}}  # fmt: skip
    try:
        delete = {"TableName": "jobs", "Key": {"job_id": {"S": "new"}}}
        dynamodb.transact_write_items(TransactItems=[{"ConditionCheck": check}, {"Delete": delete}])
    except ClientError as error:
        assert error.response["Error"]["Code"] == "TransactionCanceledException"
    assert jobs.get_item(Key={"job_id": "new"})["Item"]["status"] == "QUEUED"
    assert jobs.scan(Select="COUNT")["Count"] == 301
