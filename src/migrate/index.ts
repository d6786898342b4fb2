export { migrate, type MigrateOptions, type Migrated } from './send.js';
export { receive, type ReceiveOptions, type Receiver } from './receive.js';
