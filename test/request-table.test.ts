import { strict as assert } from 'node:assert';
import { RequestTable } from '../sdk/request-table';

describe('sdk: the request table (requests awaiting a reply, by id)', () => {
  it('holds, finds and gives back requests by id, in the ring and past it', () => {
    const table = new RequestTable<string>(8);
    for (let id = 1; id <= 20; id++) table.add(id, `r${id}`); // ids 9..20 share slots with 1..8: overflow
    assert.equal(table.size, 20);
    for (let id = 1; id <= 20; id++) assert.equal(table.get(id), `r${id}`);
    assert.equal(table.get(21), undefined);
    assert.equal(table.take(3), 'r3');
    assert.equal(table.take(3), undefined, 'taken once');
    assert.equal(table.take(11), 'r11', 'from the overflow');
    assert.equal(table.size, 18);
    table.add(27, 'r27'); // slot of 3 is free again: goes into the ring
    assert.equal(table.get(27), 'r27');
    assert.deepEqual(
      table.entries().map(([id]) => id).sort((a, b) => a - b),
      [1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 27],
    );
    assert.equal(table.takeAll().length, 19);
    assert.equal(table.size, 0);
    assert.deepEqual(table.entries(), []);
    assert.equal(table.get(1), undefined);
  });

  it('works with ids up to the connection\'s wrap-around (0xfffffff0) and refuses a slot count that is not a power of two', () => {
    const table = new RequestTable<number>(4096);
    const ids = [0xfffffff0, 0xffffffef, 1, 2, 4097];
    ids.forEach((id, i) => table.add(id, i));
    ids.forEach((id, i) => assert.equal(table.get(id), i));
    ids.forEach((id, i) => assert.equal(table.take(id), i));
    assert.equal(table.size, 0);
    assert.throws(() => new RequestTable(1000), /power of two/);
  });
});
